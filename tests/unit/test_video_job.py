"""The VIDEO part of a shot's engine request (core/jobs/video.py): plain Python, no Blender."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import load

video_job = load("core.jobs.video")
generate = load("core.generate.shot")


def scene_settings(**overrides: object) -> SimpleNamespace:
    values = dict(generator="IMAGE", video_model_preset="WAN21_VACE_1_3B", video_model="", video_control="DEPTH",
                  video_window=81, video_overlap=8, motion_adapter="guoyww/animatediff-motion-adapter-v1-5-3")
    values.update(overrides)
    return SimpleNamespace(**values)


def shot(**overrides: object) -> SimpleNamespace:
    values = dict(name="A", generator="DEFAULT", reference_image="", depth_weight=0.8)
    values.update(overrides)
    return SimpleNamespace(**values)


def test_shot_generator_overrides_the_scene_default() -> None:
    assert video_job.effective_generator(scene_settings(), shot()) == "IMAGE"
    assert video_job.effective_generator(scene_settings(generator="VIDEO"), shot()) == "VIDEO"
    assert video_job.effective_generator(scene_settings(generator="VIDEO"), shot(generator="IMAGE")) == "IMAGE"
    assert video_job.effective_generator(scene_settings(), shot(generator="VIDEO")) == "VIDEO"


def test_default_request_is_wan_1_3b_with_the_depth_range(tmp_path: Path) -> None:
    fields = video_job.video_settings(scene_settings(), shot(), {"near": 0.5, "far": 40.0})
    assert fields == {
        "generator": "VIDEO",
        "video": {"pipeline": "WAN_VACE", "model": "Wan-AI/Wan2.1-VACE-1.3B-diffusers", "control": "DEPTH",
                  "conditioning_scale": 0.8, "window": 81, "overlap": 8},
        "coherence": {"mode": "INDEPENDENT", "depth_range": [0.5, 40.0]},
    }


def test_presets_custom_and_animatediff(tmp_path: Path) -> None:
    for preset, model in (("WAN21_VACE_14B", "Wan-AI/Wan2.1-VACE-14B-diffusers"),
                          ("WAN22_VACE_14B", "linoyts/Wan2.2-VACE-Fun-14B-diffusers")):
        assert video_job.video_settings(scene_settings(video_model_preset=preset), shot(), {})["video"]["model"] == model
    custom = video_job.video_settings(scene_settings(video_model_preset="CUSTOM", video_model=str(tmp_path)), shot(), {})
    assert custom["video"]["model"] == str(tmp_path)
    with pytest.raises(generate.GenerationError, match="Custom Video Model is empty"):
        video_job.video_settings(scene_settings(video_model_preset="CUSTOM"), shot(), {})
    light = video_job.video_settings(scene_settings(video_model_preset="ANIMATEDIFF"), shot(), {})["video"]
    assert light["pipeline"] == "ANIMATEDIFF" and "model" not in light and light["window"] == 48


def test_reference_image_is_sent_by_content_and_a_missing_one_is_named(tmp_path: Path) -> None:
    image = tmp_path / "ref.png"
    image.write_bytes(b"\x89PNG fake")
    fields = video_job.video_settings(scene_settings(), shot(reference_image=str(image)), {})
    assert fields["video"]["references"] == [hashlib.sha256(image.read_bytes()).hexdigest()]
    assert video_job.reference_uploads(shot(reference_image=str(image))) == [image]
    assert video_job.reference_uploads(shot()) == []
    with pytest.raises(generate.GenerationError, match="Reference Image '.*nope.png' does not exist"):
        video_job.reference_uploads(shot(reference_image=str(tmp_path / "nope.png")))


def test_progress_names_the_window_of_a_video_job() -> None:
    status = {"generator": "VIDEO", "detail": {"windows": 3, "window": 2}}
    assert generate.window_of(status) == (2, 3)
    assert generate.window_of({"generator": "IMAGE", "detail": {"keyframes": [1]}}) == (0, 0)
