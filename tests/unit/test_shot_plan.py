"""Shot planning from markers: plain Python, no Blender."""

from __future__ import annotations

from helpers import load

shots = load("core.scene.shots")
M = shots.MarkerInfo


def ranges(plan):
    return [(s.name, s.frame_start, s.frame_end) for s in plan.shots]


def test_three_bound_markers_make_three_shots_up_to_the_next_marker():
    plan = shots.plan_shots([M("A", 1, "CamA"), M("C", 60, "CamC"), M("B", 25, "CamB")], 1, 90, "CamA")
    assert ranges(plan) == [("A", 1, 24), ("B", 25, 59), ("C", 60, 90)]
    assert all(not s.problem for s in plan.shots)


def test_unbound_markers_do_not_cut():
    plan = shots.plan_shots([M("A", 1, "CamA"), M("note", 10, None), M("B", 30, "CamB")], 1, 50, None)
    assert ranges(plan) == [("A", 1, 29), ("B", 30, 50)]


def test_no_bound_marker_means_scene_camera_over_scene_range():
    plan = shots.plan_shots([M("note", 5, None)], 10, 40, "Camera")
    assert ranges(plan) == [("Camera", 10, 40)]
    assert plan.shots[0].marker_frame is None


def test_no_camera_at_all_is_a_scene_problem():
    plan = shots.plan_shots([], 1, 10, None)
    assert plan.shots == []
    assert "no camera" in plan.problems[0]


def test_marker_bound_to_non_camera_names_marker_and_object():
    plan = shots.plan_shots([M("A", 1, "Cube", camera_is_camera=False)], 1, 10, None)
    assert "'A'" in plan.shots[0].problem and "'Cube'" in plan.shots[0].problem


def test_two_markers_on_one_frame_name_both():
    plan = shots.plan_shots([M("A", 5, "C1"), M("B", 5, "C2")], 1, 10, None)
    first = plan.shots[0]
    assert first.frame_count == 0
    assert "'A'" in first.problem and "'B'" in first.problem and "frame 5" in first.problem
    assert plan.shots[1].problem == ""


def test_marker_after_scene_end_is_a_zero_length_shot_with_a_message():
    plan = shots.plan_shots([M("A", 1, "C1"), M("Late", 200, "C2")], 1, 100, None)
    assert plan.shots[0].frame_end == 100
    assert "after the scene's end" in plan.shots[1].problem


def test_duplicate_shot_names_are_flagged():
    plan = shots.plan_shots([M("A", 1, "C1"), M("A", 20, "C2")], 1, 40, None)
    assert all("Two shots are named 'A'" in s.problem for s in plan.shots)


def test_default_seed_is_stable_and_differs_per_name():
    assert shots.default_seed("A") == shots.default_seed("A")
    assert shots.default_seed("A") != shots.default_seed("B")
    assert 0 <= shots.default_seed("A") < 2**31
