"""Pose control maps in real Blender: keypoints equal world_to_camera_view of the mapped bones,
occluded keypoints are invisible, unmappable armatures are named, the drawing is written."""

from __future__ import annotations

import importlib.util
import json
import math
import types
from pathlib import Path
from types import ModuleType

import pytest

bpy = pytest.importorskip("bpy")
from blender_scenes import add_camera  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
W, H = 128, 72


def demo_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("viewfinder_demo_scene", ROOT / "demo" / "scene.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def shot(camera, start: int = 1, end: int = 2) -> types.SimpleNamespace:
    return types.SimpleNamespace(name="S", camera=camera, frame_start=start, frame_end=end)


def person_scene(scene):
    rig = demo_module().build_character(scene, "Hero", (0.0, 0.0, 0.0))
    rig.pose.bones["DEF-upper_arm.L"].rotation_mode = "XYZ"
    rig.pose.bones["DEF-upper_arm.L"].rotation_euler.y = 0.6  # a posed arm, not the rest pose
    cam = add_camera(scene, "Cam", location=(0.3, -6.0, 1.0), rotation=(math.radians(90), 0, 0))
    scene.render.resolution_x, scene.render.resolution_y = W, H
    return rig, cam


def expected_pixels(scene, cam, rig, ends) -> list:
    from bpy_extras.object_utils import world_to_camera_view

    out = []
    for end in ends:
        bone = rig.pose.bones[end[0]]
        co = rig.matrix_world @ (bone.tail if end[1] == "tail" else bone.head)
        ndc = world_to_camera_view(scene, cam, co)
        out.append((ndc.x * W, (1.0 - ndc.y) * H))
    return out


def test_keypoints_equal_world_to_camera_view(vf: ModuleType, scene, tmp_path: Path) -> None:
    cond = vf.core.conditioning
    rig, cam = person_scene(scene)
    result = cond.render_shot(scene, shot(cam), tmp_path / "c", width=W, height=H)
    assert result.people == ["Hero"]
    doc = json.loads((tmp_path / "c" / "pose" / "0001.json").read_text())
    (person,) = doc["people"]
    rig_map = cond.rigs.auto_map(rig.data.bones.keys())
    scene.frame_set(1)
    expected = expected_pixels(scene, cam, rig, rig_map.body)
    flat = person["pose_keypoints_2d"]
    assert len(flat) == 18 * 3
    for i, (ex, ey) in enumerate(expected):
        x, y, c = flat[3 * i : 3 * i + 3]
        assert c == 1.0, cond.rigs.BODY_KEYPOINTS[i]
        assert abs(x - ex) < 0.5 and abs(y - ey) < 0.5, (cond.rigs.BODY_KEYPOINTS[i], (x, y), (ex, ey))
    hand = person["hand_left_keypoints_2d"]
    assert len(hand) == 21 * 3
    hx = expected_pixels(scene, cam, rig, rig_map.left_hand)
    visible = [(hand[3 * i], hand[3 * i + 1], h) for i, h in enumerate(hx) if hand[3 * i + 2] == 1.0]
    assert visible and all(abs(x - ex) < 0.5 and abs(y - ey) < 0.5 for x, y, (ex, ey) in visible)
    drawing = vf.core.conditioning.png.read_png(tmp_path / "c" / "pose" / "0001.png")
    assert drawing.shape == (H, W, 3) and drawing.any()
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["pose"] is True and meta["pose_frames"] == {"1": True, "2": True}


def test_keypoint_behind_a_wall_is_invisible(vf: ModuleType, scene, tmp_path: Path) -> None:
    cond = vf.core.conditioning
    rig, cam = person_scene(scene)
    # A wall between the camera and the character's left side (image right) hides its left wrist.
    rig_map = cond.rigs.auto_map(rig.data.bones.keys())
    scene.frame_set(1)
    wrist = rig.matrix_world @ rig.pose.bones[rig_map.body[7][0]].head
    mesh = bpy.data.meshes.new("Wall")
    mesh.from_pydata([(-0.1, 0, -0.1), (0.1, 0, -0.1), (0.1, 0, 0.1), (-0.1, 0, 0.1)], [], [(0, 1, 2, 3)])
    wall = bpy.data.objects.new("Wall", mesh)
    wall.location = (wrist.x, -2.0, wrist.z)
    scene.collection.objects.link(wall)
    cond.render_shot(scene, shot(cam, 1, 1), tmp_path / "c", width=W, height=H)
    flat = json.loads((tmp_path / "c" / "pose" / "0001.json").read_text())["people"][0]["pose_keypoints_2d"]
    names = cond.rigs.BODY_KEYPOINTS
    assert flat[3 * names.index("left_wrist") + 2] == 0.0
    assert flat[3 * names.index("right_wrist") + 2] == 1.0 and flat[3 * names.index("neck") + 2] == 1.0


def test_unmappable_armature_is_named_and_no_person_means_no_pose(vf: ModuleType, scene, tmp_path: Path) -> None:
    cond = vf.core.conditioning
    data = bpy.data.armatures.new("Crane")
    crane = bpy.data.objects.new("Crane", data)
    scene.collection.objects.link(crane)
    bpy.context.view_layer.objects.active = crane
    bpy.ops.object.mode_set(mode="EDIT")
    bone = data.edit_bones.new("Boom")
    bone.head, bone.tail = (0, 0, 0), (0, 0, 1)
    bpy.ops.object.mode_set(mode="OBJECT")
    cam = add_camera(scene, "Cam")
    result = cond.render_shot(scene, shot(cam, 1, 1), tmp_path / "c", width=W, height=H)
    assert any("'Crane'" in w and "Boom" in w for w in result.warnings)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["people"] == [] and meta["pose"] is False and meta["pose_frames"] == {"1": False}
    assert not (tmp_path / "c" / "pose").exists()


def test_user_mapping_overrides_auto_map(vf: ModuleType, scene, tmp_path: Path) -> None:
    cond = vf.core.conditioning
    m = cond.rigs.auto_map(["DEF-upper_arm.L", "DEF-upper_arm.R", "DEF-thigh.L", "DEF-thigh.R", "DEF-spine.004",
                            "Custom"], {"neck": ("Custom", "tail")})
    assert m.is_person and m.body[1] == ("Custom", "tail")
    mixamo = cond.rigs.auto_map([f"mixamorig:{n}" for n in ("Neck", "LeftArm", "RightArm", "LeftUpLeg", "RightUpLeg",
                                                           "LeftHand", "LeftHandIndex1")])
    assert mixamo.is_person and mixamo.body[7] == ("mixamorig:LeftHand", "head")
