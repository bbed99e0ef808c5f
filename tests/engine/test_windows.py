"""Window planning for video models (engine/models/windows.py): pure functions, no model."""

from __future__ import annotations

import pytest

from engine.models.video import control_frames, pad_to
from engine.models.windows import frames_down, frames_up, plan_size, plan_windows, seam_frames


def covered_once(num_frames: int, plan: object) -> list[int]:
    """How many windows contribute each shot frame (must be exactly one each)."""
    counts = [0] * num_frames
    for w in plan.windows:  # type: ignore[attr-defined]
        for i in range(w.new_start, w.stop):
            counts[i] += 1
    return counts


def test_frame_counts_are_4k_plus_1() -> None:
    assert [frames_up(n) for n in (1, 2, 5, 6, 81, 82)] == [1, 5, 5, 9, 81, 85]
    assert [frames_down(n) for n in (1, 4, 5, 80, 81)] == [1, 1, 5, 77, 81]
    with pytest.raises(ValueError, match="at least 1 frame"):
        frames_up(0)


@pytest.mark.parametrize("num_frames", [1, 3, 5, 17, 81, 82, 100, 200, 1000])
def test_every_frame_comes_from_exactly_one_window_and_timing_never_shifts(num_frames: int) -> None:
    plan = plan_windows(num_frames, 81, 8)
    assert covered_once(num_frames, plan) == [1] * num_frames
    for k, w in enumerate(plan.windows):
        assert (w.length - 1) % 4 == 0 and w.length >= 5  # a clip the model takes
        assert w.index == k and w.start >= 0 and w.stop <= num_frames
        if k:
            previous = plan.windows[k - 1]
            assert w.kept == previous.stop - w.start >= 8  # kept frames are the previous window's last ones
            assert w.pad == 0  # only a shot shorter than one window is padded
    assert plan.windows[0].kept == 0 and plan.windows[-1].stop == num_frames


def test_200_frames_in_81_frame_windows() -> None:
    plan = plan_windows(200, 81, 8)
    assert [(w.start, w.stop, w.kept) for w in plan.windows] == [(0, 81, 0), (73, 154, 8), (119, 200, 35)]
    assert seam_frames(plan) == [81, 154]


def test_short_shot_is_padded_at_the_end_with_a_message() -> None:
    plan = plan_windows(3, 81, 8)
    (w,) = plan.windows
    assert (w.start, w.stop, w.kept, w.pad, w.length) == (0, 3, 0, 2, 5)
    assert "fewer than the model's minimum of 5: padded to 5" in plan.messages[0]
    plan = plan_windows(10, 81, 8)
    assert plan.windows[0].pad == 3 and "padded to 13 at the end" in plan.messages[0]


def test_window_and_overlap_are_rounded_with_messages() -> None:
    plan = plan_windows(100, 20, 30)
    assert plan.window == 17 and plan.overlap == 16
    assert "using 17" in plan.messages[0] and "using 16" in plan.messages[1]
    assert covered_once(100, plan) == [1] * 100
    assert plan_windows(100, 17, 0).overlap == 1  # at least one kept frame links the windows


def test_size_rounds_up_to_16_and_crops_back() -> None:
    plan = plan_size(72, 40)
    assert (plan.width, plan.height, plan.crop) == (80, 48, (4, 4, 76, 44))
    assert plan.message and "generating at 80x48 and cropping back to 72x40" in plan.message
    assert plan_size(832, 480).message is None


def test_padding_the_control_repeats_edges_and_crops_back_exactly() -> None:
    import numpy as np

    depth = np.linspace(0, 1, 72 * 40, dtype=np.float32).reshape(40, 72)
    pose = np.zeros((40, 72, 3), np.uint8)
    pose[10:12, 20:30] = (255, 0, 0)
    (both,) = control_frames([depth], [pose], "DEPTH_POSE", 40, 72)
    assert tuple(both[10, 20]) == (255, 0, 0) and both[0, 0, 0] == 0 and both[39, 71, 0] == 255
    (depth_only,) = control_frames([depth], [pose], "DEPTH", 40, 72)
    assert depth_only[10, 20, 0] == round(depth[10, 20] * 255)
    plan = plan_size(72, 40)
    padded = pad_to(both, plan.crop, plan.height, plan.width)
    left, top, right, bottom = plan.crop
    assert padded.shape == (48, 80, 3) and (padded[top:bottom, left:right] == both).all()
    assert (padded[0, left:right] == both[0]).all()  # the edge row repeats outward


def test_one_pipeline_slot_swaps_video_and_image_models() -> None:
    """A video model and an image model evict each other from a one-slot cache (the default engine)."""
    from engine.models.pipelines import PipelineCache, PipelineKey
    from engine.models.video import VideoKey

    cache = PipelineCache(1)
    video = VideoKey("WAN_VACE", "folder:/m:1", None, None, None, "cpu", "float32", False, None)
    image = PipelineKey("folder:/sd:1", None, None, None, 0.0, "cpu", "float32", False, False)
    assert cache.get(video, lambda: "wan") == ("wan", False)
    assert cache.get(image, lambda: "sd") == ("sd", False)
    assert cache.get(video, lambda: "wan again") == ("wan again", False)
