"""The control maps' state hash remembered by its inputs (core/conditioning/on_disk.py, issue 22).

An unchanged shot must cost a lookup, not a step through every frame; and every change that can
move what the maps show must still be seen. Each edit below is checked both ways: the inputs key
changes, and the full state hash (computed by stepping the frames, as before) changes with it.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import pytest

bpy = pytest.importorskip("bpy")
from blender_scenes import H, W, add_camera, add_plane, depth_scene, shot  # noqa: E402


def animated_scene(scene):
    """depth_scene with the near plane keyed across frames 1-3, a child on it, and a constrained cube."""
    cam = depth_scene(scene)
    near = scene.objects["Near"]
    near.keyframe_insert("location", frame=1)
    near.location.x += 0.5
    near.keyframe_insert("location", frame=3)
    scene.frame_set(1)
    child = add_plane(scene, "Child", 0.5, (0.0, 0.0, 0.1))
    child.parent = near
    bpy.ops.mesh.primitive_cube_add(size=0.5, location=(1.5, 0.0, -5.0))
    cube = bpy.context.active_object
    cube.name = "Tracker"
    constraint = cube.constraints.new("COPY_LOCATION")
    constraint.target, constraint.use_x, constraint.use_y, constraint.use_z = near, False, True, False
    return cam


def key_and_state(vf: ModuleType, scene, cam, frames: list[int]) -> tuple[str | None, str]:
    on_disk = vf.core.conditioning.on_disk
    objects = on_disk.drawn_objects(scene, cam)
    key = on_disk.inputs_key(scene, cam, frames, W, H, objects)
    state = on_disk.state_hash(scene, cam, frames, W, H)
    scene.frame_set(1)
    return key, state


def test_an_unchanged_shot_is_a_lookup(vf: ModuleType, scene, tmp_path: Path, monkeypatch) -> None:
    cond = vf.core.conditioning
    cam = animated_scene(scene)
    first = cond.render_shot(scene, shot("S", cam, 1, 3), tmp_path / "c", width=W, height=H)
    stepped: list[int] = []
    real = cond.pipeline.state_hash_frame
    monkeypatch.setattr(cond.pipeline, "state_hash_frame", lambda d, s, o, f: (stepped.append(f), real(d, s, o, f)))
    again = cond.render_shot(scene, shot("S", cam, 1, 3), tmp_path / "c", width=W, height=H)
    assert not first.reused and again.reused and stepped == []
    # What was remembered is what stepping every frame computes.
    assert again.meta["state"] == cond.on_disk.state_hash(scene, cam, [1, 2, 3], W, H)


EDITS = {
    "static move": lambda s: setattr(s.objects["Back"].location, "z", -12.0),
    "keyframe value": lambda s: s.objects["Near"].animation_data.action and _shift_key(s.objects["Near"]),
    "parent moved": lambda s: setattr(s.objects["Near"], "delta_location", (0.0, 0.3, 0.0)),
    "constraint setting": lambda s: setattr(s.objects["Tracker"].constraints[0], "use_x", True),
    "constraint target's keys": lambda s: _shift_key(s.objects["Near"], index=1),
    "child's own offset": lambda s: setattr(s.objects["Child"].location, "x", 0.4),
    "camera lens": lambda s: setattr(s.camera.data, "lens", 35.0),
    "mesh edited": lambda s: s.objects["Back"].data.vertices[0].co.__setitem__(0, -40.0),
}


def _shift_key(obj, index: int = 0) -> None:
    """Move the last keyframe of the object's location curve ``index`` by 0.7 (any action layout)."""
    curves = vf_fcurves(obj)
    curve = next(c for c in curves if c.data_path == "location" and c.array_index == index)
    point = curve.keyframe_points[-1]
    point.co.y += 0.7
    point.handle_left.y += 0.7
    point.handle_right.y += 0.7
    curve.update()


def vf_fcurves(obj) -> list:
    action = obj.animation_data.action
    if getattr(action, "fcurves", None) is not None and len(action.fcurves):
        return list(action.fcurves)
    slot = obj.animation_data.action_slot
    return [c for layer in action.layers for strip in layer.strips for c in strip.channelbag(slot).fcurves]


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_every_input_change_is_seen(vf: ModuleType, scene, edit: str) -> None:
    cam = animated_scene(scene)
    before = key_and_state(vf, scene, cam, [1, 2, 3])
    EDITS[edit](scene)
    scene.frame_set(1)
    after = key_and_state(vf, scene, cam, [1, 2, 3])
    assert before[0] is not None and after[0] is not None
    assert after[1] != before[1], f"{edit}: the maps' state did not change (the edit is not a real test)"
    assert after[0] != before[0], f"{edit}: the maps changed but the remembered key did not"


def test_another_camera_moving_keeps_the_maps(vf: ModuleType, scene, tmp_path: Path) -> None:
    """Only what the maps can show is hashed: another shot's camera is not in this shot's maps."""
    cond = vf.core.conditioning
    cam = animated_scene(scene)
    other = add_camera(scene, "Other")
    cond.render_shot(scene, shot("S", cam, 1, 2), tmp_path / "c", width=W, height=H)
    other.location.x += 3.0
    bpy.data.lights.new("Sun", "SUN")
    again = cond.render_shot(scene, shot("S", cam, 1, 2), tmp_path / "c", width=W, height=H)
    assert again.reused


def test_no_key_where_evaluation_brings_more(vf: ModuleType, scene) -> None:
    """Drivers, NLA strips and frame-change scripts can move things the inputs do not show: the
    full hash runs (the key is None), as before the memo."""
    on_disk = vf.core.conditioning.on_disk
    cam = animated_scene(scene)

    def key() -> str | None:
        return on_disk.inputs_key(scene, cam, [1, 2], W, H, on_disk.drawn_objects(scene, cam))

    assert key() is not None
    tracker = scene.objects["Tracker"]
    driver = tracker.driver_add("location", 0)
    driver.driver.expression = "frame * 0.1"
    assert key() is None
    tracker.driver_remove("location", 0)
    assert key() is not None
    track = scene.objects["Back"].animation_data_create().nla_tracks.new()
    assert key() is None
    scene.objects["Back"].animation_data.nla_tracks.remove(track)
    assert key() is not None

    def handler(_scene, _depsgraph=None) -> None:
        _scene.objects["Tracker"].rotation_euler.z = math.radians(_scene.frame_current)

    bpy.app.handlers.frame_change_post.append(handler)
    try:
        assert key() is None
    finally:
        bpy.app.handlers.frame_change_post.remove(handler)
    # A driver on an object a drawn object follows counts too (the parent of Child is Near).
    scene.objects["Near"].driver_add("scale", 2).driver.expression = "1.0"
    assert key() is None
