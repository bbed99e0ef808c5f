"""The data-pass render's speed-ups keep the maps exact (issue 12, part 6).

The flat material override gives the same Z, Vector and Object Index as the scene's own
materials; materials that can change what those passes see keep the user's shading;
persistent data follows an animated armature frame by frame; the world, the override
and the material list are the user's again afterwards.
"""

from __future__ import annotations

import functools
import math
import sys
import types
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
from blender_scenes import add_camera  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_conditioning_pose import demo_module as _load_demo  # noqa: E402 - the demo scene builder, loaded once

W, H = 96, 64
demo_module = functools.cache(_load_demo)


def box(scene, name: str, location, size: float = 1.0):
    demo = demo_module()
    verts, faces = demo._box(location, (size, size, size))
    return demo._mesh_object(scene, name, verts, faces)


def material(name: str, kind: str = "principled") -> bpy.types.Material:
    mat = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0):
        mat.use_nodes = True
    tree = mat.node_tree
    tree.nodes.clear()
    out = tree.nodes.new("ShaderNodeOutputMaterial")
    if kind == "principled":
        shader = tree.nodes.new("ShaderNodeBsdfPrincipled")
        shader.inputs["Base Color"].default_value = (0.8, 0.2, 0.1, 1.0)
    elif kind == "glass":
        shader = tree.nodes.new("ShaderNodeBsdfGlass")
    elif kind == "emission":
        shader = tree.nodes.new("ShaderNodeEmission")
    elif kind == "noise":  # a procedural texture into a diffuse: shading work, opaque
        shader = tree.nodes.new("ShaderNodeBsdfDiffuse")
        noise = tree.nodes.new("ShaderNodeTexNoise")
        tree.links.new(noise.outputs["Color"], shader.inputs["Color"])
    else:
        raise ValueError(kind)
    tree.links.new(shader.outputs[0], out.inputs["Surface"])
    return mat


def street(scene) -> bpy.types.Object:
    """A ground, boxes with several opaque materials, a light and a world; returns the camera."""
    demo = demo_module()
    demo._mesh_object(scene, "Ground", [(-20, -20, 0), (20, -20, 0), (20, 20, 0), (-20, 20, 0)], [(0, 1, 2, 3)])
    for i, kind in enumerate(("principled", "glass", "emission", "noise")):
        obj = box(scene, f"Box.{kind}", (-3.0 + 2.0 * i, 2.0 + i, 0.5 + 0.3 * i), 1.0 + 0.2 * i)
        obj.data.materials.append(material(f"M.{kind}", kind))
        obj.pass_index = i + 1
    lamp = bpy.data.objects.new("Lamp", bpy.data.lights.new("Lamp", "POINT"))
    lamp.location = (0, -2, 5)
    scene.collection.objects.link(lamp)
    scene.world = bpy.data.worlds.new("Sky")
    cam = add_camera(scene, "Cam", location=(0.0, -8.0, 2.0), rotation=(math.radians(80), 0, 0))
    cam.keyframe_insert("location", frame=1)
    cam.location.x = 1.0
    cam.keyframe_insert("location", frame=3)
    scene.camera = cam
    return cam


def passes(
    render: ModuleType, scene, cam, frames, tmp: Path, *, flat: bool = True, persistent: bool = True, own: bool = False,
) -> list[dict]:
    """The frames' passes with configure()'s settings; `flat`: whether configure chose the flat override;
    `own`: render with the scene's own materials anyway (the override taken off after configure)."""
    with render.RenderGuard() as guard:
        layer = render.configure(guard, scene, cam, W, H)
        override = layer.material_override
        assert (override is not None and override.name == render.OVERRIDE_NAME) == flat
        if own:
            guard.set(layer, "material_override", None)
        if not persistent:
            guard.set(scene.render, "use_persistent_data", False)
        return [render.render_frame(scene, layer, frame, tmp) for frame in frames]


def assert_same(a: list[dict], b: list[dict]) -> None:
    for fa, fb in zip(a, b, strict=True):
        for key in ("z", "vector", "index"):
            np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


def test_flat_override_gives_the_same_passes_as_the_scenes_materials(vf: ModuleType, vfmod, scene, tmp_path: Path) -> None:
    render = vfmod("core.conditioning.render")
    cam = street(scene)
    assert render.why_materials_matter(scene) is None
    fast = passes(render, scene, cam, [1, 3], tmp_path)
    assert_same(fast, passes(render, scene, cam, [1, 3], tmp_path, own=True))
    assert set(np.unique(fast[0]["index"])) == {0, 1, 2, 3, 4}  # every box seen, ground is 0
    assert np.isfinite(fast[0]["z"]).all() and (fast[0]["z"] < 100).mean() > 0.5
    assert np.abs(fast[1]["vector"][..., :2]).max() > 0.5  # the camera moved


SHADERS = {
    "transparent": "ShaderNodeBsdfTransparent", "holdout": "ShaderNodeHoldout", "portal": "ShaderNodeBsdfRayPortal",
}


def add_front(scene, kind: str) -> bpy.types.Object:
    """A box in front of the camera whose material is of `kind`; its pass index is 9."""
    if kind == "volume_object":
        obj = bpy.data.objects.new("Front.volume_object", bpy.data.volumes.new("Front.volume_object"))
        scene.collection.objects.link(obj)
        return obj
    obj = box(scene, f"Front.{kind}", (0.0, -3.0, 1.5), 2.0)
    obj.pass_index = 9
    mat = material(f"F.{kind}", "principled")
    tree = mat.node_tree
    out = next(n for n in tree.nodes if n.bl_idname == "ShaderNodeOutputMaterial")
    principled = next(n for n in tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    if kind == "alpha":
        principled.inputs["Alpha"].default_value = 0.0
    elif kind == "alpha_texture":
        tree.links.new(tree.nodes.new("ShaderNodeTexNoise").outputs["Fac"], principled.inputs["Alpha"])
    elif kind in SHADERS:
        tree.links.new(tree.nodes.new(SHADERS[kind]).outputs[0], out.inputs["Surface"])
    elif kind == "holdout_in_group":
        group = bpy.data.node_groups.new("Cutout", "ShaderNodeTree")
        group.nodes.new("ShaderNodeHoldout")
        tree.nodes.new("ShaderNodeGroup").node_tree = group
    elif kind == "volume":
        tree.links.new(tree.nodes.new("ShaderNodeVolumePrincipled").outputs[0], out.inputs["Volume"])
    elif kind == "displacement":
        tree.links.new(tree.nodes.new("ShaderNodeDisplacement").outputs[0], out.inputs["Displacement"])
        if hasattr(mat, "displacement_method"):
            mat.displacement_method = "DISPLACEMENT"
        else:
            mat.cycles.displacement_method = "DISPLACEMENT"
    obj.data.materials.append(mat)
    return obj


@pytest.mark.parametrize("kind", ["displacement", "holdout", "holdout_in_group", "volume_object"])
def test_shading_that_changes_the_passes_keeps_the_users_materials(vf: ModuleType, vfmod, scene, kind: str) -> None:
    render = vfmod("core.conditioning.render")
    street(scene)
    add_front(scene, kind)
    reason = render.why_materials_matter(scene)
    assert reason is not None and kind.split("_")[0] in reason
    with render.RenderGuard() as guard:
        assert render.configure(guard, scene, scene.camera, W, H).material_override is None


def test_bump_only_displacement_and_unused_materials_keep_the_fast_path(vf: ModuleType, vfmod, scene) -> None:
    render = vfmod("core.conditioning.render")
    street(scene)
    mat = add_front(scene, "displacement").data.materials[0]
    if hasattr(mat, "displacement_method"):
        mat.displacement_method = "BUMP"
    else:
        mat.cycles.displacement_method = "BUMP"
    assert render.why_materials_matter(scene) is None
    material("Unused.holdout").node_tree.nodes.new("ShaderNodeHoldout")  # in the file, on no object
    assert render.why_materials_matter(scene) is None
    # With a geometry-nodes modifier any material in the file may be assigned, so all are checked.
    scene.objects["Ground"].modifiers.new("GN", "NODES")
    assert "Unused.holdout" in render.why_materials_matter(scene)


@pytest.mark.parametrize("kind", ["alpha", "alpha_texture", "transparent", "portal", "volume"])
def test_see_through_surfaces_give_the_same_depth_and_masks(vf: ModuleType, vfmod, scene, tmp_path: Path, kind) -> None:
    """Without transparent bounces the passes stop at the first surface whatever its shader.

    Z and Object Index equal the render with the box's own material; its Vector is the motion of
    an opaque box (its own shader scales it by its opacity, which for alpha 0 leaves nothing).
    """
    render = vfmod("core.conditioning.render")
    cam = street(scene)
    front = add_front(scene, kind)
    assert render.why_materials_matter(scene) is None
    flat = passes(render, scene, cam, [1, 2], tmp_path)
    own = passes(render, scene, cam, [1, 2], tmp_path, own=True)
    for f, o in zip(flat, own, strict=True):
        np.testing.assert_array_equal(f["z"], o["z"])
        np.testing.assert_array_equal(f["index"], o["index"])
        assert (f["index"] == 9).sum() > 500  # the box is in the masks
    front.data.materials[0] = material("Opaque")
    assert_same(flat, passes(render, scene, cam, [1, 2], tmp_path, own=True))
    assert np.abs(flat[1]["vector"][flat[1]["index"] == 9]).max() > 0.5


def test_persistent_data_follows_an_animated_armature(vf: ModuleType, vfmod, scene, tmp_path: Path) -> None:
    """Frames rendered in one persistent session equal fresh renders of the same frames."""
    render = vfmod("core.conditioning.render")
    demo = demo_module()
    scene.render.use_persistent_data = False
    rig = demo.build_character(scene, "Hero", (-1.0, 0.0, 0.0))
    demo._animate_walk(rig, 1, 7, (2.0, 0.0))
    scene.objects["Hero.Body"].pass_index = 1
    demo._mesh_object(scene, "Ground", [(-9, -9, 0), (9, -9, 0), (9, 9, 0), (-9, 9, 0)], [(0, 1, 2, 3)])
    cam = add_camera(scene, "Cam", location=(0.0, -6.0, 1.0), rotation=(math.radians(90), 0, 0))
    frames = [1, 2, 4, 7]
    fresh = [passes(render, scene, cam, [f], tmp_path, persistent=False)[0] for f in reversed(frames)]
    fresh.reverse()
    persistent = passes(render, scene, cam, frames, tmp_path)
    assert scene.render.use_persistent_data is False  # the user's value again
    assert_same(persistent, fresh)
    # It did move: the body's mask changes shape, and its pixels carry motion vectors.
    body = [f["index"] == 1 for f in persistent]
    assert all(b.sum() > 50 for b in body)
    assert (body[0] != body[-1]).sum() > 50 and (body[1] != body[2]).sum() > 10
    assert np.abs(persistent[2]["vector"][body[2]][:, :2]).max() > 0.2


def test_world_override_and_materials_are_the_users_afterwards(vf: ModuleType, vfmod, scene, tmp_path: Path) -> None:
    cond = vf.core.conditioning
    cam = street(scene)
    world = scene.world
    users_override = material("Clay")
    layer = scene.view_layers[0]
    layer.material_override = users_override
    scene.render.use_persistent_data = True  # the user's own persistent session must survive ours
    names = sorted(m.name for m in bpy.data.materials)
    shot = types.SimpleNamespace(name="S", camera=cam, frame_start=1, frame_end=2)
    for attempt in range(2):  # twice: the second render must not meet the first one's removed material
        cond.render_shot(scene, shot, tmp_path / f"c{attempt}", width=W, height=H, force=True)
        assert scene.world == world and layer.material_override == users_override
        assert sorted(m.name for m in bpy.data.materials) == names
        assert scene.render.use_persistent_data is True
    # And a plain user render afterwards works.
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1
    scene.render.resolution_x, scene.render.resolution_y = 32, 16
    assert bpy.ops.render.render() == {"FINISHED"}
