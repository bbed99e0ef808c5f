"""Deforum schedules (core/scene/deforum.py): plain Python, no Blender."""

from __future__ import annotations

import json

import pytest
from helpers import load

deforum = load("core.scene.deforum")


def test_pasted_prompt_lines_in_both_deforum_forms() -> None:
    text = '0: a quiet street\n"48": "the street in flames",\n\n# a comment\n 96 : ash --neg people\n'
    schedule = deforum.parse(text)
    assert schedule.prompts == [(0, "a quiet street"), (48, "the street in flames"), (96, "ash")]
    assert schedule.problems == [] and not schedule.values
    assert schedule.notes == ["line 5: the negative part ('people') is not imported: put it in the shot's negative "
                              "prompt"]


def test_malformed_lines_are_named_and_the_rest_imports() -> None:
    text = "0: a quiet street\nforty: burning\n12 a street without colon\n-3: before the start\n30: \n60: smoke"
    schedule = deforum.parse(text)
    assert schedule.prompts == [(0, "a quiet street"), (60, "smoke")]
    assert schedule.problems == [
        "line 2: 'forty: burning' is not 'frame: prompt': skipped",
        "line 3: '12 a street without colon' is not 'frame: prompt': skipped",
        "line 4: frame -3 is negative: skipped (Deforum frames start at 0)",
        "line 5: frame 30 has an empty prompt: skipped",
    ]


def test_value_schedule_for_a_target() -> None:
    schedule = deforum.parse("0:(0.65), 24:(0.4), 30:(0.5*sin(t)), 40: 0.3", target="flow_strength")
    assert schedule.values == {"flow_strength": [(0, 0.35), (24, 0.6)]}
    assert schedule.problems == [
        "line 1: frame 30: '0.5*sin(t)' is an expression, not a number: skipped (key the value by hand or with a "
        "driver)",
        "line 1: '40: 0.3' is not 'frame:(value)': skipped",
    ]
    assert deforum.parse("0:(7), 10:(12.5)", target="guidance_scale").values == {"guidance_scale": [(0, 7.0),
                                                                                                    (10, 12.5)]}
    seeds = deforum.parse("0:(5), 10:(-1), 20:(9.4)", target="seed")
    assert seeds.values == {"seed": [(0, 5.0), (20, 9.0)]}
    assert "seed -1 means a random seed" in seeds.problems[0]
    with pytest.raises(ValueError, match="target must be one of"):
        deforum.parse("0:(1)", target="steps")


def test_settings_file() -> None:
    settings = {
        "prompts": {"0": "a quiet street", "48": "the street in flames", "max_f-1": "ash"},
        "positive_prompts": "film grain", "negative_prompts": "",
        "strength_schedule": "0: (0.65), 48: (0.5)", "cfg_scale_schedule": "0: (7)",
        "seed_behavior": "schedule", "seed_schedule": "0:(5), 24:(6)",
        "cn_1_enabled": True, "cn_1_module": "depth_midas", "cn_1_model": "control_v11f1p_sd15_depth",
        "cn_1_weight": "0:(1), 48:(0.5)", "cn_1_guidance_start": "0:(0.1)", "cn_1_guidance_end": "0:(0.9)",
        "cn_2_enabled": True, "cn_2_module": "openpose_full", "cn_2_weight": "0:(0.8)",
        "cn_3_enabled": False, "cn_3_module": "canny", "cn_3_weight": "0:(1)",
        "max_frames": 120,
    }
    schedule = deforum.parse(json.dumps(settings, indent=2))
    assert schedule.prompts == [(0, "a quiet street"), (48, "the street in flames")]
    assert schedule.problems == ["prompts \"max_f-1\": frame 'max_f-1' is not a whole number: skipped"]
    assert schedule.values == {
        "flow_strength": [(0, 0.35), (48, 0.5)], "guidance_scale": [(0, 7.0)], "seed": [(0, 5.0), (24, 6.0)],
        "depth_weight": [(0, 1.0), (48, 0.5)], "control_start": [(0, 0.1)], "control_end": [(0, 0.9)],
        "pose_weight": [(0, 0.8)],
    }
    assert any("film grain" in note for note in schedule.notes)
    # Older notebooks: animation_prompts; cond_prompts as text.
    assert deforum.parse(json.dumps({"animation_prompts": {"0": "a"}})).prompts == [(0, "a")]
    assert deforum.parse(json.dumps({"cond_prompts": '{"0": "a", "10": "b"}'})).prompts == [(0, "a"), (10, "b")]
    # A seed schedule is only read when the seeds follow it.
    assert "seed" not in deforum.parse(json.dumps({"seed_behavior": "iter", "seed_schedule": "0:(1)",
                                                   "prompts": {"0": "a"}})).values


def test_bad_json_and_duplicate_frames() -> None:
    bad = deforum.parse('{"prompts": {"0": "a",}}')
    assert bad.empty and "not valid JSON (line 1" in bad.problems[0]
    twice = deforum.parse("0: a\n0: b")
    assert twice.prompts == [(0, "b")]
    assert twice.problems == ["prompt frame 0 is given twice: the last one ('b') is kept"]
    assert deforum.parse('{"0": "a", "12": "b"}').prompts == [(0, "a"), (12, "b")]


def test_normal_line_and_seg_units_key_their_map_and_its_own_range() -> None:
    settings = {
        "cn_1_enabled": True, "cn_1_module": "normal_bae", "cn_1_model": "control_v11p_sd15_normalbae",
        "cn_1_weight": "0:(0.7), 24:(0)", "cn_1_guidance_start": "0:(0.2)", "cn_1_guidance_end": "0:(0.8)",
        "cn_2_enabled": True, "cn_2_module": "canny", "cn_2_weight": "0:(1)",
        "cn_3_enabled": True, "cn_3_module": "seg_ofade20k", "cn_3_guidance_end": "0:(0.5)",
        "cn_4_enabled": True, "cn_4_module": "tile_resample", "cn_4_weight": "0:(1)",
    }
    schedule = deforum.parse(json.dumps(settings))
    assert schedule.values == {
        "normal_weight": [(0, 0.7), (24, 0.0)], "normal_start": [(0, 0.2)], "normal_end": [(0, 0.8)],
        "lineart_weight": [(0, 1.0)], "seg_end": [(0, 0.5)],
    }
    assert any("unit 4" in note and "skipped" in note for note in schedule.notes)
    assert deforum.parse("0:(0.3)", target="lineart_weight").values == {"lineart_weight": [(0, 0.3)]}
