"""Shots from camera-bound markers in real Blender: ranges, settings that last, bad input."""

from __future__ import annotations

import bpy
import pytest
from blender_scenes import add_camera, bind_marker


@pytest.fixture()
def three_shots(scene):
    scene.frame_start, scene.frame_end = 1, 90
    cams = [add_camera(scene, f"Cam{i}") for i in range(3)]
    for name, frame, cam in zip(("Wide", "Close", "Reverse"), (1, 25, 60), cams):
        bind_marker(scene, name, frame, cam)
    return scene


def ranges(scene):
    return [(s.name, s.frame_start, s.frame_end, s.camera.name if s.camera else None) for s in scene.viewfinder.shots]


def test_three_markers_make_three_shots(three_shots):
    assert ranges(three_shots) == [
        ("Wide", 1, 24, "Cam0"),
        ("Close", 25, 59, "Cam1"),
        ("Reverse", 60, 90, "Cam2"),
    ]


def test_no_markers_means_scene_camera_over_scene_range(scene):
    scene.camera = add_camera(scene, "Main")
    scene.frame_start, scene.frame_end = 5, 40
    assert ranges(scene) == [("Main", 5, 40, "Main")]


def test_settings_survive_save_and_reload(three_shots, tmp_path):
    shots = three_shots.viewfinder.shots
    shots["Close"].prompt = "a close-up of a detective"
    shots["Close"].seed = 4242
    shots["Reverse"].depth_weight = 0.4
    three_shots.viewfinder.style_prompt = "film noir, 35mm"
    path = tmp_path / "film.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=str(path))
    scene = bpy.context.scene
    shots = scene.viewfinder.shots
    assert shots["Close"].prompt == "a close-up of a detective"
    assert shots["Close"].seed == 4242
    assert shots["Reverse"].depth_weight == pytest.approx(0.4)
    assert scene.viewfinder.style_prompt == "film noir, 35mm"


def test_settings_follow_renamed_and_moved_markers(three_shots):
    shots = three_shots.viewfinder.shots
    shots["Close"].prompt = "close"
    shots["Reverse"].prompt = "reverse"
    three_shots.timeline_markers["Close"].name = "Insert"
    three_shots.timeline_markers["Reverse"].frame = 70
    shots = three_shots.viewfinder.shots
    assert shots["Insert"].prompt == "close"
    assert shots["Reverse"].prompt == "reverse"
    assert (shots["Insert"].frame_end, shots["Reverse"].frame_start) == (69, 70)


def test_settings_survive_adding_and_removing_shots(three_shots):
    shots = three_shots.viewfinder.shots
    for shot in shots:
        shot.prompt = f"prompt {shot.name}"
    bind_marker(three_shots, "Cutaway", 40, add_camera(three_shots, "Cam3"))
    assert [s.name for s in three_shots.viewfinder.shots] == ["Wide", "Close", "Cutaway", "Reverse"]
    assert three_shots.viewfinder.shots["Reverse"].prompt == "prompt Reverse"
    marker = three_shots.timeline_markers["Close"]
    three_shots.timeline_markers.remove(marker)
    assert [s.name for s in three_shots.viewfinder.shots] == ["Wide", "Cutaway", "Reverse"]
    assert three_shots.viewfinder.shots["Wide"].frame_end == 39
    # A marker that comes back gets its settings back.
    bind_marker(three_shots, "Close", 25, bpy.data.objects["Cam1"])
    assert three_shots.viewfinder.shots["Close"].prompt == "prompt Close"


def test_new_shots_get_distinct_seeds(three_shots):
    seeds = [s.seed for s in three_shots.viewfinder.shots]
    assert len(set(seeds)) == 3


def test_deleting_a_bound_camera_drops_its_shot_cleanly(three_shots):
    bpy.data.objects.remove(bpy.data.objects["Cam1"])
    assert ranges(three_shots) == [("Wide", 1, 59, "Cam0"), ("Reverse", 60, 90, "Cam2")]


def test_marker_bound_to_a_non_camera_gets_a_message(scene):
    cube = bpy.data.objects.new("Cube", bpy.data.meshes.new("Cube"))
    scene.collection.objects.link(cube)
    bind_marker(scene, "Oops", 1, cube)
    shot = scene.viewfinder.shots["Oops"]
    assert "'Oops'" in shot.problem and "'Cube'" in shot.problem


def test_two_markers_on_one_frame_and_no_camera(scene):
    bind_marker(scene, "A", 10, add_camera(scene, "C1"))
    bind_marker(scene, "B", 10, add_camera(scene, "C2"))
    shots = scene.viewfinder.shots
    assert "frame 10" in shots["A"].problem
    assert shots["B"].problem == ""


def test_scene_without_camera_reports_and_does_not_fail(scene):
    assert len(scene.viewfinder.shots) == 0
    assert bpy.ops.viewfinder.sync_shots() == {"FINISHED"}


def test_depsgraph_handler_keeps_list_current(three_shots):
    _ = three_shots.viewfinder.shots  # sync once
    three_shots.timeline_markers["Wide"].name = "Establishing"
    bpy.context.view_layer.update()
    three_shots.frame_set(2)  # triggers depsgraph_update_post
    names = [s.name for s in three_shots.viewfinder.shot_list]  # stored list, no sync on read
    assert names[0] == "Establishing"


def test_operators_see_markers_bound_just_now(scene):
    """A script binds a marker and calls an operator at once: no handler has run in between."""
    bind_marker(scene, "Now", 1, add_camera(scene, "C"))
    assert len(scene.viewfinder.shot_list) == 0  # nothing has synced yet
    assert bpy.ops.viewfinder.jump_to_shot.poll()


def test_the_shots_property_hides_only_blenders_read_only_refusal(three_shots, vfmod, monkeypatch):
    """Drawing the UI may not write ID data: that is waited out. Any other AttributeError is a bug and surfaces."""
    shots_core = vfmod("core.scene.shots")
    assert len(three_shots.viewfinder.shots) == 3  # synced once, while writing is allowed

    def refused(scene):
        raise AttributeError("Writing to ID classes in this context is not allowed: Scene, Scene datablock, "
                             "error setting ViewfinderShot.name")

    def broken(scene):
        return scene.viewfinder.no_such_setting

    monkeypatch.setattr(shots_core, "sync_shots", refused)
    assert [s.name for s in three_shots.viewfinder.shots] == ["Wide", "Close", "Reverse"]  # the stored list
    monkeypatch.setattr(shots_core, "sync_shots", broken)
    with pytest.raises(AttributeError, match="no_such_setting"):
        _ = three_shots.viewfinder.shots
