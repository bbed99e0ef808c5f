"""The typed engine request (core/jobs/request.py): what it sends, and that it matches the engine's schema."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
from helpers import ROOT, load

request = load("core.jobs.request")


def engine_schema():
    pytest.importorskip("pydantic")  # every venv `make setup` builds has it; a bare interpreter may not
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module("engine.contract.schema")
    finally:
        sys.path.remove(str(ROOT))


def models() -> dict:
    return {"base": "sd15", "controlnet_depth": "depth", "controlnet_pose": None, "lora": None, "lora_scale": 1.0}


def test_unset_optional_fields_are_not_sent_but_a_refused_controlnet_is():
    job = request.JobRequest.from_parts(
        "A", models(), {"prompt": "p", "style_prompt": "", "negative_prompt": ""},
        {"seed": 3, "steps": 2, "guidance_scale": 7.5, "width": 128, "height": 72, "depth_weight": 1.0,
         "pose_weight": 1.0, "control_start": 0.0, "control_end": 1.0, "coherence": {"mode": "INDEPENDENT"},
         "per_frame": {"2": {"seed": 4}}},
        batch_size=4, device="cpu", attention_slicing=False, cpu_offload=False)
    body = job.to_dict()
    # The order and keys the add-on sent before the request was typed (the engine's cache keys depend on values).
    assert list(body) == ["shot", "models", "prompt", "style_prompt", "negative_prompt", "seed", "steps",
                          "guidance_scale", "width", "height", "depth_weight", "pose_weight", "control_start",
                          "control_end", "coherence", "batch_size", "device", "attention_slicing", "cpu_offload"]
    assert body["models"] == models()  # None for the pose ControlNet is sent: omitting it means the default one
    assert body["coherence"] == {"mode": "INDEPENDENT"}
    assert job.body([{"frame": 1}]) == {**body, "frames": [{"frame": 1}]}
    assert "per_frame" not in json.dumps(body)  # take.json's per-frame values travel in the frames


def test_normal_line_art_and_seg_travel_only_with_their_maps():
    job = request.JobRequest.from_parts(
        "A", {**models(), "controlnet_normal": "normal", "controlnet_lineart": request.LINEART_PRESETS["mlsd"]},
        {"prompt": "p", "style_prompt": "", "negative_prompt": ""},
        {"seed": 3, "depth_weight": 1.0, "pose_weight": 1.0, "normal_weight": 0.5, "lineart_weight": 1.2,
         "control_start": 0.0, "control_end": 1.0, "control_ranges": {"lineart": [0.0, 0.6]},
         "coherence": {"mode": "INDEPENDENT"}})
    body = job.to_dict()
    assert body["models"] == {**models(), "controlnet_normal": "normal",
                              "controlnet_lineart": "lllyasviel/control_v11p_sd15_mlsd"}
    assert (body["normal_weight"], body["lineart_weight"], body["control_ranges"]) == (0.5, 1.2, {"lineart": [0.0, 0.6]})
    assert "seg_weight" not in body and "controlnet_seg" not in body["models"]
    schema = engine_schema()
    if has_issue_23(schema):
        depth, normal = "d" * 64, "e" * 64
        frames = [{"frame": 1, "depth": depth, "normal": normal, "lineart": None,
                   "control_ranges": {"normal": [0.2, 0.9]}, "normal_weight": 0.0}]
        parsed = schema.JobRequest.model_validate(job.body(frames))
        assert parsed.control_ranges == {"lineart": (0.0, 0.6)} and parsed.frames[0].normal == normal


def test_an_unknown_setting_is_refused_when_the_request_is_built():
    with pytest.raises(TypeError, match="colour"):
        request.JobRequest.from_parts("A", models(), {}, {"colour": "red"})
    with pytest.raises(TypeError, match="strenght"):
        request.JobRequest.from_parts("A", models(), {}, {"coherence": {"mode": "FLOW", "strenght": 0.5}})


def test_frame_entries_send_each_map_by_hash_and_the_frames_own_values():
    depth, flow = Path("/c/depth/0001.png"), Path("/c/flow/0002.npy")
    maps = {1: {"depth": depth, "pose": None, "flow": None}, 2: {"depth": depth, "pose": None, "flow": flow}}
    entries = request.frame_entries([1, 2], maps, {depth: "d" * 64, flow: "f" * 64}, {2: {"seed": 9}})
    assert entries == [{"frame": 1, "depth": "d" * 64, "pose": None, "flow": None},
                       {"frame": 2, "depth": "d" * 64, "pose": None, "flow": "f" * 64, "seed": 9}]


# Issue 23's fields: sent only with a normal, line-art or seg map. Until the engine side of the issue is on
# the same branch, its schema may lack them; these tests then check everything else.
ISSUE_23 = {"controlnet_normal", "controlnet_lineart", "controlnet_seg", "normal_weight", "lineart_weight",
            "seg_weight", "control_ranges"}


def has_issue_23(schema) -> bool:
    return "normal_weight" in schema.JobRequest.model_fields


def test_the_add_on_model_defaults_are_the_engines():
    schema = engine_schema()
    assert (request.DEFAULT_BASE, request.DEFAULT_CONTROLNET_DEPTH, request.DEFAULT_CONTROLNET_POSE) == (
        schema.DEFAULT_BASE, schema.DEFAULT_DEPTH, schema.DEFAULT_POSE)
    assert (request.DEFAULT_VIDEO_MODEL, request.DEFAULT_MOTION_ADAPTER) == (
        schema.DEFAULT_VIDEO_MODEL, schema.DEFAULT_MOTION_ADAPTER)
    # What an empty ModelSpec sends is what the engine assumes when nothing is sent (the issue-23 nets
    # are not sent without their maps, and the engine loads none of them then).
    engine_defaults = {k: v for k, v in schema.ModelSpec().model_dump().items() if k not in ISSUE_23}
    assert engine_defaults == {**request.ModelSpec().to_dict(), "ip_adapter": None, "image_encoder": None,
                               # Issue 24: not sent for SD 1.5, which the engine assumes.
                               "family": "sd15", "controlnet_union": None, "base_config": None}
    if has_issue_23(schema):
        fields = schema.ModelSpec.model_fields
        assert [fields[f"controlnet_{k}"].default for k in ("normal", "lineart", "seg")] == [
            request.DEFAULT_CONTROLNET_NORMAL, request.DEFAULT_CONTROLNET_LINEART, request.DEFAULT_CONTROLNET_SEG]
        assert request.LINEART_PRESETS == schema.LINEART_PRESETS and request.MAP_KINDS == schema.MAP_KINDS


def test_every_typed_spec_has_only_fields_the_engine_knows():
    """A field the engine does not have would be refused (extra="forbid"): catch it here, not at submit."""
    schema = engine_schema()
    pairs = [(request.ModelSpec, schema.ModelSpec), (request.CoherenceSpec, schema.CoherenceSpec),
             (request.CharacterSpec, schema.CharacterSpec), (request.VideoSpec, schema.VideoSpec),
             (request.FinalizeSpec, schema.FinalizeSpec), (request.JobRequest, schema.JobRequest)]
    from dataclasses import fields

    for ours, theirs in pairs:
        extra = {f.name for f in fields(ours)} - set(theirs.model_fields) - (set() if has_issue_23(schema) else ISSUE_23)
        assert not extra, f"{ours.__name__} has fields the engine's {theirs.__name__} lacks: {extra}"
    # The engine fields the add-on never sends are only these (frames: added by run_shot).
    missing = set(schema.JobRequest.model_fields) - {f.name for f in fields(request.JobRequest)}
    assert missing == {"frames"}
