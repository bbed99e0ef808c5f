"""Warping a rendered frame along the exact flow reproduces the next render (real Blender).

Analytic scenes: a textured wall under a camera pan (no parallax: everything is carried
but the strip entering the frame), and a textured wall behind a textured card under a
camera truck (parallax: the card uncovers wall, which the depth check must mark).
The colour frames are Cycles renders of an emissive noise texture; the flow and depth
are the add-on's own control maps. ``engine/coherence/flow.py`` is numpy-only and loaded by path.
"""

from __future__ import annotations

import importlib.util
import json
import math
import types
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
from blender_scenes import add_camera  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
W, H = 128, 72


def load_flow_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vf_engine_flow", ROOT / "engine" / "coherence" / "flow.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def textured_plane(scene, name: str, size: float, location, rotation, scale: float):
    mesh = bpy.data.meshes.new(name)
    s = size / 2
    mesh.from_pydata([(-s, -s, 0), (s, -s, 0), (s, s, 0), (-s, s, 0)], [], [(0, 1, 2, 3)])
    obj = bpy.data.objects.new(name, mesh)
    obj.location, obj.rotation_euler = location, rotation
    scene.collection.objects.link(obj)
    mat = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0):  # 5.0 materials always have nodes and deprecate the switch
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    coords = nodes.new("ShaderNodeTexCoord")
    noise = nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = scale
    noise.inputs["Detail"].default_value = 1.0
    emit = nodes.new("ShaderNodeEmission")
    out = nodes.new("ShaderNodeOutputMaterial")
    links.new(coords.outputs["Object"], noise.inputs["Vector"])
    links.new(noise.outputs["Color"], emit.inputs["Color"])
    links.new(emit.outputs["Emission"], out.inputs["Surface"])
    mesh.materials.append(mat)
    return obj


def render_colour(scene, cam, frame: int, path: Path) -> np.ndarray:
    """An RGB float frame, row 0 at the top."""
    scene.camera = cam
    scene.frame_set(frame)
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 16
    scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = W, H, 100
    scene.view_settings.view_transform = "Standard"
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_depth = "16"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    image = bpy.data.images.load(str(path))
    pixels = np.array(image.pixels[:], dtype=np.float32).reshape(H, W, image.channels)[::-1, :, :3]
    bpy.data.images.remove(image)
    return pixels * 255.0


def conditioning(vf: ModuleType, scene, cam, tmp_path: Path, start: int, end: int) -> Path:
    shot = types.SimpleNamespace(name="S", camera=cam, frame_start=start, frame_end=end)
    out = tmp_path / "conditioning"
    vf.core.conditioning.render_shot(scene, shot, out, width=W, height=H)
    return out


def masks_for(flowmod: ModuleType, vf: ModuleType, cond: Path, frame: int, flow: np.ndarray):
    meta = json.loads((cond / "meta.json").read_text())
    return flowmod.flow_masks(read_depth(vf, cond / "depth" / f"{frame - 1:04d}.png"),
                              read_depth(vf, cond / "depth" / f"{frame:04d}.png"), flow,
                              offset=flowmod.depth_offset(meta["near"], meta["far"]))


def read_depth(vf: ModuleType, path: Path) -> np.ndarray:
    return vf.core.conditioning.png.read_png(path)


def test_pan_warp_reproduces_next_frame(vf: ModuleType, scene, tmp_path: Path) -> None:
    flowmod = load_flow_module()
    cam = add_camera(scene, "Cam", location=(0, 0, 0), rotation=(math.radians(90), 0, 0))
    textured_plane(scene, "Wall", 400.0, (0, 20, 0), (math.radians(90), 0, 0), scale=0.15)
    for frame in range(1, 5):
        cam.rotation_euler.z = math.radians(3.0 * (frame - 1))
        cam.keyframe_insert("rotation_euler", frame=frame)
    cond = conditioning(vf, scene, cam, tmp_path, 2, 3)
    before = render_colour(scene, cam, 2, tmp_path / "c2.png")
    after = render_colour(scene, cam, 3, tmp_path / "c3.png")
    flow = np.load(cond / "flow" / "0003.npy")
    masks = masks_for(flowmod, vf, cond, 3, flow)
    warped, inside = flowmod.warp(before, flow)

    # The pan brings in a strip on one side (about 3 deg of a 39.6 deg view: ~10 px); nothing else is marked.
    assert abs(float(flow[36, 64, 0])) > 5.0
    assert 0.03 < masks.out_of_frame.mean() < 0.15 and not masks.disoccluded.any()
    assert masks.valid.mean() > 0.8
    error = np.abs(warped - after)[masks.valid].mean()
    unwarped = np.abs(before - after)[masks.valid].mean()
    print(f"pan: warp error {error:.3f}/255, unwarped {unwarped:.3f}, valid {masks.valid.mean():.3f}")
    assert error < 1.0, f"warp error {error:.2f}/255 outside the marked pixels"
    assert unwarped > 5 * error, (unwarped, error)  # the test can tell a warp from no warp


def test_truck_disocclusion_is_marked(vf: ModuleType, scene, tmp_path: Path) -> None:
    flowmod = load_flow_module()
    cam = add_camera(scene, "Cam", location=(0, 0, 0), rotation=(math.radians(90), 0, 0))
    textured_plane(scene, "Wall", 400.0, (0, 20, 0), (math.radians(90), 0, 0), scale=0.15)
    textured_plane(scene, "Card", 3.0, (0, 6, 0), (math.radians(90), 0, 0), scale=2.0)
    for frame in range(1, 5):
        cam.location.x = 0.4 * (frame - 1)
        cam.keyframe_insert("location", frame=frame)
    cond = conditioning(vf, scene, cam, tmp_path, 2, 3)
    before = render_colour(scene, cam, 2, tmp_path / "c2.png")
    after = render_colour(scene, cam, 3, tmp_path / "c3.png")
    flow = np.load(cond / "flow" / "0003.npy")
    masks = masks_for(flowmod, vf, cond, 3, flow)
    warped, _ = flowmod.warp(before, flow)
    error = np.abs(warped - after).mean(axis=-1)

    # The camera moves right: the card slides left faster than the wall and uncovers wall on its right.
    print(f"truck: valid error {error[masks.valid].mean():.3f}, disoccluded {masks.disoccluded.sum()} px, "
          f"error there {error[masks.disoccluded].mean():.2f}, bad valid {((error > 20.0) & masks.valid).sum()}")
    assert masks.disoccluded.sum() > 30
    cols = np.nonzero(masks.disoccluded.any(axis=0))[0]
    card_cols = np.nonzero((read_depth(vf, cond / "depth" / "0003.png") > 40000).any(axis=0))[0]
    assert cols.min() >= card_cols.max() - 3, (cols, card_cols)
    assert error[masks.valid].mean() < 1.0, error[masks.valid].mean()
    # What the check marked really was not carried: plain warping is wrong there.
    assert error[masks.disoccluded].mean() > 4 * error[masks.valid].mean()
    # Depth consistency alone (no dilation) finds nearly all badly warped pixels in the frame.
    bad = (error > 20.0) & masks.valid
    assert bad.mean() < 0.002, bad.sum()
