"""Control maps from analytic scenes in real Blender: decoded depth, flow, masks, settings untouched.

Small resolutions and 2–3 frames keep this under a minute per Blender version.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
from blender_scenes import H, W, add_camera, add_plane, depth_scene, shot  # noqa: E402,F401


def read_png(vf: ModuleType, path: Path) -> np.ndarray:
    return vf.core.conditioning.png.read_png(path)


@pytest.mark.parametrize("ortho", [False, True])
def test_depth_decodes_to_known_distances(vf: ModuleType, scene, tmp_path: Path, ortho: bool) -> None:
    cond = vf.core.conditioning
    cam = depth_scene(scene, ortho)
    result = cond.render_shot(scene, shot("S", cam, 1, 2), tmp_path / "conditioning", width=W, height=H)
    meta = json.loads((tmp_path / "conditioning" / "meta.json").read_text())
    assert meta["complete"] is True and meta["ortho"] is ortho
    assert meta["near"] == pytest.approx(4.0, rel=1e-4) and meta["far"] == pytest.approx(10.0, rel=1e-4)
    assert meta["frames"] == [1, 2] and (meta["width"], meta["height"]) == (W, H)
    png = read_png(vf, tmp_path / "conditioning" / "depth" / "0001.png")
    assert png.dtype == np.uint16 and png.shape == (H, W)
    z = cond.depth.decode(png, meta["near"], meta["far"])
    # Left-middle pixels see the near plane, right-middle pixels the backdrop.
    assert np.allclose(z[30:42, 4:20], 4.0, rtol=0.005)
    assert np.allclose(z[30:42, 100:124], 10.0, rtol=0.005)
    assert png[36, 10] > png[36, 110]  # white = near
    assert result.near == meta["near"]


def test_background_is_zero_and_depth_is_per_shot(vf: ModuleType, scene, tmp_path: Path) -> None:
    cond = vf.core.conditioning
    cam = add_camera(scene, "Cam", location=(0, 0, 0), rotation=(0, 0, 0))
    plane = add_plane(scene, "P", 2.0, (0.0, 0.0, -5.0))
    plane.keyframe_insert("location", frame=1)
    plane.location.z = -8.0
    plane.keyframe_insert("location", frame=2)
    cond.render_shot(scene, shot("S", cam, 1, 2), tmp_path / "c", width=W, height=H)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["near"] == pytest.approx(5.0, rel=1e-4) and meta["far"] == pytest.approx(8.0, rel=1e-4)
    first = read_png(vf, tmp_path / "c" / "depth" / "0001.png")
    second = read_png(vf, tmp_path / "c" / "depth" / "0002.png")
    assert first[0, 0] == 0 and second[0, 0] == 0  # corners: no geometry
    # Not normalized per frame: the far frame is darker, and decodes to its own distance.
    assert first[36, 64] == 65535 and second[36, 64] == 1
    assert cond.depth.decode(second, meta["near"], meta["far"])[36, 64] == pytest.approx(8.0, rel=0.005)


def test_camera_truck_gives_analytic_flow(vf: ModuleType, scene, tmp_path: Path) -> None:
    cond = vf.core.conditioning
    cam = add_camera(scene, "Cam", location=(0, 0, 5), rotation=(0, 0, 0))
    add_plane(scene, "Ground", 200.0, (0, 0, 0))
    for frame in range(1, 5):  # a key on every frame: exact positions whatever the interpolation
        cam.location = (frame - 1.0, (frame - 1.0) * 0.5, 5)
        cam.keyframe_insert("location", frame=frame)
    cond.render_shot(scene, shot("S", cam, 2, 3), tmp_path / "c", width=W, height=H)
    # 50 mm lens on a 36 mm sensor, 5 units away: W pixels span 5 * 36 / 50 units.
    k = W / (5.0 * 36.0 / 50.0)
    forward = np.load(tmp_path / "c" / "flow" / "forward" / "0002.npy")
    backward = np.load(tmp_path / "c" / "flow" / "0003.npy")
    assert forward.shape == (H, W, 2) and forward.dtype == np.float32
    # The camera moves +1 x (right) and +0.5 y (up in the image) per frame: the ground moves left and down.
    assert np.allclose(forward[..., 0], -k, atol=0.5) and np.allclose(forward[..., 1], 0.5 * k, atol=0.5)
    assert np.allclose(backward[..., 0], k, atol=0.5) and np.allclose(backward[..., 1], -0.5 * k, atol=0.5)


def test_camera_pan_flow_matches_reprojection(vf: ModuleType, scene, tmp_path: Path) -> None:
    """A pure pan (rotation about the camera's vertical axis): each pixel's flow equals its reprojection."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    cond = vf.core.conditioning
    cam = add_camera(scene, "Cam", location=(0, 0, 0), rotation=(math.radians(90), 0, 0))
    add_plane(scene, "Wall", 400.0, (0, 20, 0), rotation=(math.radians(90), 0, 0))
    for frame in range(1, 5):
        cam.rotation_euler.z = math.radians(3.0 * (frame - 1))
        cam.keyframe_insert("rotation_euler", frame=frame)
    scene.render.resolution_x, scene.render.resolution_y = W, H
    cond.render_shot(scene, shot("S", cam, 2, 3), tmp_path / "c", width=W, height=H)
    forward = np.load(tmp_path / "c" / "flow" / "forward" / "0002.npy")
    checked = 0
    for row in (5, 36, 66):
        for col in (3, 40, 64, 100, 124):
            scene.frame_set(2)
            # The wall point seen at this pixel center: intersect the pixel's ray with the wall plane y = 20.
            frame_corners = [cam.matrix_world @ c for c in cam.data.view_frame(scene=scene)]
            tr, br, bl, tl = frame_corners
            u, v = (col + 0.5) / W, (row + 0.5) / H
            top = tl.lerp(tr, u)
            bottom = bl.lerp(br, u)
            through = top.lerp(bottom, v)
            origin = cam.matrix_world.translation
            direction = (through - origin).normalized()
            point = origin + direction * ((20.0 - origin.y) / direction.y)
            scene.frame_set(3)
            ndc = world_to_camera_view(scene, cam, Vector(point))
            expected = (ndc.x * W - (col + 0.5), (1.0 - ndc.y) * H - (row + 0.5))
            assert forward[row, col] == pytest.approx(expected, abs=0.5), (row, col)
            checked += 1
    assert checked == 15 and abs(forward[36, 64, 0]) > 3.0  # it did move


def snapshot(scene) -> dict:
    out = {}
    for owner_name, owner in (
        ("render", scene.render),
        ("image", scene.render.image_settings),
        ("cycles", scene.cycles),
        ("layer", scene.view_layers[0]),
    ):
        for prop in owner.bl_rna.properties:
            if prop.identifier == "rna_type" or prop.type in {"POINTER", "COLLECTION"}:
                continue
            value = getattr(owner, prop.identifier)
            out[f"{owner_name}.{prop.identifier}"] = tuple(value) if hasattr(value, "__len__") and not isinstance(value, str) else value
    out["frame"] = scene.frame_current
    out["camera"] = scene.camera.name if scene.camera else None
    out["pass_index"] = {o.name: o.pass_index for o in scene.objects}
    out["world"] = scene.world.name if scene.world else None
    out["material_override"] = [vl.material_override.name if vl.material_override else None for vl in scene.view_layers]
    out["materials"] = sorted(m.name for m in bpy.data.materials)
    out["locations"] = {o.name: tuple(o.matrix_world.translation) for o in scene.objects}
    return out


def test_user_settings_identical_before_and_after(vf: ModuleType, scene, tmp_path: Path) -> None:
    cond = vf.core.conditioning
    cam = depth_scene(scene)
    other = add_camera(scene, "Other")
    scene.camera = other
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.filepath = "//user_output/"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 1920, 1080, 50
    scene.render.use_motion_blur = True
    scene.cycles.samples = 77
    scene.view_layers[0].use_pass_z = False
    scene.objects["Near"].pass_index = 5
    scene.world = bpy.data.worlds.new("User World")
    scene.view_layers[0].material_override = bpy.data.materials.new("User Clay")
    scene.frame_set(7)
    before = snapshot(scene)
    cond.render_shot(scene, shot("S", cam, 1, 2), tmp_path / "c", width=W, height=H)
    assert snapshot(scene) == before
    # And on error: a cancel after the first frame leaves nothing behind and restores everything.
    with pytest.raises(cond.ConditioningCancelled):
        calls = iter([False, True])
        cond.render_shot(scene, shot("S", cam, 1, 3), tmp_path / "d", width=W, height=H, cancel=lambda: next(calls))
    assert snapshot(scene) == before
    assert not (tmp_path / "d").exists() and not any(p.name.startswith(".d.") for p in tmp_path.iterdir())
    assert not (tmp_path / "user_output").exists()


def test_reuses_current_maps_and_rerenders_after_a_change(vf: ModuleType, scene, tmp_path: Path) -> None:
    cond = vf.core.conditioning
    cam = depth_scene(scene)
    first = cond.render_shot(scene, shot("S", cam, 1, 1), tmp_path / "c", width=W, height=H)
    again = cond.render_shot(scene, shot("S", cam, 1, 1), tmp_path / "c", width=W, height=H)
    assert not first.reused and again.reused
    scene.objects["Near"].location.z = -5.0
    moved = cond.render_shot(scene, shot("S", cam, 1, 1), tmp_path / "c", width=W, height=H)
    assert not moved.reused and moved.near == pytest.approx(5.0, rel=1e-4)


def test_masks_and_legend(vf: ModuleType, scene, tmp_path: Path) -> None:
    cond = vf.core.conditioning
    cam = depth_scene(scene)
    cond.render_shot(scene, shot("S", cam, 1, 1), tmp_path / "c", width=W, height=H)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    legend = meta["masks"]["legend"]
    ids = {entry["name"]: int(key) for key, entry in legend.items()}
    mask = read_png(vf, tmp_path / "c" / "masks" / "0001.png")
    assert mask[36, 10] == ids["Near"] and mask[36, 110] == ids["Back"] and ids["Near"] != ids["Back"]
    # The ids each frame shows are recorded, so characters not in a shot are known without reading masks.
    assert meta["masks"]["ids_per_frame"] == {"1": sorted(int(v) for v in set(mask.flatten().tolist()) - {0})}
    assert meta["people"] == [] and meta["pose"] is False and not (tmp_path / "c" / "pose").exists()


def test_bad_input(vf: ModuleType, scene, tmp_path: Path) -> None:
    cond = vf.core.conditioning
    cam = depth_scene(scene)
    empty = bpy.data.objects.new("NotACam", None)
    scene.collection.objects.link(empty)
    with pytest.raises(cond.ConditioningError, match="NotACam.*not a camera"):
        cond.render_shot(scene, shot("S", empty), tmp_path / "c", width=W, height=H)
    with pytest.raises(cond.ConditioningError, match="'S' has no camera"):
        cond.render_shot(scene, shot("S", None), tmp_path / "c", width=W, height=H)
    with pytest.raises(cond.ConditioningError, match="'S' has no frames"):
        cond.render_shot(scene, shot("S", cam, 5, 4), tmp_path / "c", width=W, height=H)
    assert not (tmp_path / "c").exists()


def test_operators_render_into_temporary_project_and_preview_on_the_vse(vf: ModuleType, scene, tmp_path: Path) -> None:
    from blender_scenes import bind_marker

    cam = depth_scene(scene)
    scene.frame_start, scene.frame_end = 1, 2
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080
    scene.viewfinder.long_edge = 128
    bind_marker(scene, "Shot A", 1, cam)
    assert bpy.data.filepath == ""  # unsaved: maps go to a temporary project folder
    assert bpy.ops.viewfinder.render_conditioning(shot="Shot A", force=True) == {"FINISHED"}
    project = vf.core.timeline.paths.project_for("", scene.name)
    meta = json.loads((project.conditioning_dir("Shot A") / "meta.json").read_text())
    assert project.temporary and (meta["width"], meta["height"]) == (128, 72) and meta["frames"] == [1, 2]
    assert bpy.ops.viewfinder.preview_conditioning(kind="DEPTH", shot="Shot A") == {"FINISHED"}
    strips = list(vf.core.compat.strips_of(scene.sequence_editor))
    (strip,) = [s for s in strips if s.get("viewfinder_kind") == "control" and s.get("viewfinder_shot") == "Shot A"]
    assert strip["viewfinder_control"] == "DEPTH"
    assert (strip.frame_final_start, strip.frame_final_end) == (1, 3) and len(strip.elements) == 2
    # No pose maps without a person: the preview says so instead of adding an empty strip.
    with pytest.raises(RuntimeError, match="no person"):
        bpy.ops.viewfinder.preview_conditioning(kind="POSE", shot="Shot A")
