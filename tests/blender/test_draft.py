"""Draft and final tiers (issue 15) in real Blender: the scene's tier and the shot's override reach the
engine request; a draft take records tier "draft" and its draft settings; "Final from This Draft" makes a
take with tier "final", the draft's seed and settings at the final size; bad input is named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bpy
import pytest
from blender_scenes import needs_engine, read_size, take_strips, truck_scene


@pytest.fixture()
def truck(tmp_path: Path, tiny_models: Path, vf: Any) -> dict[str, Any]:
    """A saved 3-frame truck shot (render 256x144, long edge 128) with tiny models and the tiny draft LoRA."""
    scene = truck_scene(tiny_models, size=(256, 144), last_frame=3, shift=0.5)
    settings = scene.viewfinder
    settings.long_edge, settings.steps, settings.guidance_scale, settings.batch_size = 128, 6, 6.0, 4
    settings.draft_lora = str(tiny_models / "lcm-lora.safetensors")
    shot = settings.shots[0]
    shot.prompt, shot.seed, shot.coherence = "boxes in front of a wall", 1234, "INDEPENDENT"
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "draft.blend"))
    return {"scene": scene, "shot": shot, "takes": tmp_path / "viewfinder" / "Truck" / "takes",
            "root": tmp_path / "viewfinder", "models": tiny_models}


def collect(vfmod: Any, scene: bpy.types.Scene, shot: Any) -> Any:
    project = vfmod("operators.common").project_of(bpy.context)
    prefs = vfmod("preferences").get_prefs(bpy.context)
    return vfmod("core.generate.shot_job").collect_shot(scene, shot, project, prefs)


def test_scene_tier_and_shot_override_reach_the_request(truck: dict[str, Any], vfmod: Any) -> None:
    scene, shot, settings = truck["scene"], truck["shot"], truck["scene"].viewfinder
    # Final (the default): the request and the take's settings are what they always were.
    final = collect(vfmod, scene, shot)
    assert final.tier == "final" and "tier" not in final.request.to_dict() and "draft" not in final.request.to_dict()
    assert "tier" not in final.settings and (final.request.to_dict()["steps"], final.request.to_dict()["width"]) == (6, 128)
    # The scene at Draft, the shot at Scene Default: a draft request with the scene's draft options.
    settings.tier, settings.draft_steps, settings.draft_guidance = "DRAFT", 4, 1.0
    draft = collect(vfmod, scene, shot)
    assert draft.tier == "draft" and draft.request.to_dict()["tier"] == "draft"
    assert draft.request.to_dict()["draft"] == {
        "lora": str(truck["models"] / "lcm-lora.safetensors"), "lora_scale": 1.0, "scheduler": "LCM", "steps": 4,
        "guidance_scale": 1.0, "tiny_vae": False, "tiny_vae_model": None}
    assert draft.settings["draft"]["final_size"] == [128, 72] and draft.settings["tier"] == "draft"
    body = draft.request.to_dict()
    assert body["steps"] == 6 and body["seed"] == 1234  # the final's, kept for the final
    # The shot's override wins over the scene's tier, both ways.
    shot.tier = "FINAL"
    assert collect(vfmod, scene, shot).tier == "final"
    settings.tier, shot.tier = "FINAL", "DRAFT"
    settings.draft_scheduler, settings.draft_half_size = "TCD", True
    half = collect(vfmod, scene, shot)
    assert half.tier == "draft" and half.request.to_dict()["draft"]["scheduler"] == "TCD"
    # Half size: half the long edge, maps rendered beside the full-size ones.
    assert (half.request.to_dict()["width"], half.request.to_dict()["height"]) == (128, 72)  # half would be 64x32 < 64: kept
    settings.long_edge = 256
    half = collect(vfmod, scene, shot)
    assert (half.request.to_dict()["width"], half.request.to_dict()["height"]) == (128, 72)
    assert half.settings["draft"]["final_size"] == [256, 144]
    assert half.conditioning_dir.name == "conditioning-128x72"
    # A Video shot has no draft tier: final, with a warning naming the shot.
    shot.generator = "VIDEO"
    video = collect(vfmod, scene, shot)
    assert video.tier == "final" and "tier" not in video.request.to_dict()
    assert any("draft tier is for the Image generator" in w and "'Truck'" in w for w in video.warnings)


def with_engine(test: Any) -> Any:
    """The engine marks (blender_scenes.needs_engine) on one test of a module whose other tests need none."""
    for mark in needs_engine():
        test = mark(test)
    return test


@with_engine
def test_draft_take_and_final_from_it(truck: dict[str, Any], vfmod: Any, local_engine: None,
                                      capfd: pytest.CaptureFixture[str]) -> None:
    scene, shot, settings = truck["scene"], truck["shot"], truck["scene"].viewfinder
    settings.tier, settings.draft_half_size, settings.long_edge = "DRAFT", True, 256
    settings.draft_tiny_vae, settings.draft_tiny_vae_model = True, str(truck["models"] / "tiny-vae")
    # 1. A draft take: tier "draft" in take.json, half-size frames, its strip shown at the final size.
    assert bpy.ops.viewfinder.generate(shot="") == {"FINISHED"}
    draft_dir = truck["takes"] / "001"
    draft = json.loads((draft_dir / "take.json").read_text())
    assert draft["complete"] and draft["tier"] == "draft" and draft["seed"] == 1234
    assert draft["settings"]["draft"]["steps"] == 4 and draft["settings"]["draft"]["tiny_vae"] is True
    assert [read_size(draft_dir / f"{n:04d}.png") for n in (1, 2, 3)] == [(128, 72)] * 3
    (strip,) = take_strips(scene)
    assert strip.transform.scale_x == pytest.approx(2.0)
    takes = vfmod("core.timeline.takes")
    assert takes.take_tier(takes.read_take(draft_dir)) == "draft"
    # The Sequencer sidebar shows the tier and offers Final from This Draft (drawn into a recording layout:
    # background Blender draws no UI).
    sidebar = Layout()
    vfmod("panels.takes").draw_take(sidebar, strip)
    assert ("label", "Tier: Draft") in sidebar.calls and ("operator", "viewfinder.final_from_draft") in sidebar.calls
    # 2. The shot's prompt edited after the draft: the final keeps the draft's.
    shot.prompt = "something else entirely"
    scene.sequence_editor.active_strip = strip
    assert bpy.ops.viewfinder.final_from_draft() == {"FINISHED"}
    final_dir = truck["takes"] / "002"
    final = json.loads((final_dir / "take.json").read_text())
    assert final["complete"] and final["tier"] == "final"
    assert final["seed"] == draft["seed"] == 1234 and final["prompt"] == "boxes in front of a wall"
    expected = {k: v for k, v in draft["settings"].items() if k not in ("tier", "draft")}
    assert final["settings"] == {**expected, "width": 256, "height": 144}
    assert final["models"] == draft["models"]
    assert [read_size(final_dir / f"{n:04d}.png") for n in (1, 2, 3)] == [(256, 144)] * 3
    old, new = take_strips(scene)
    assert old == strip and old.mute and not new.mute and new.transform.scale_x == pytest.approx(1.0)
    # 3. Bad input: a final take is not a draft; the message says what is needed.
    scene.sequence_editor.active_strip = new
    with pytest.raises(RuntimeError, match=r"Take 002 of shot 'Truck' is a final take, not a draft"):
        bpy.ops.viewfinder.final_from_draft()
    # The frame size changed since the draft: named, with both sizes.
    scene.sequence_editor.active_strip = old
    settings.long_edge = 192
    with pytest.raises(RuntimeError, match=r"frame size changed since draft take 001 .*256×144.*192×\d+"):
        bpy.ops.viewfinder.final_from_draft()
    assert sorted(p.name for p in truck["takes"].iterdir()) == ["001", "002"]
    sidebar = Layout()
    vfmod("panels.takes").draw_take(sidebar, new)
    assert ("label", "Tier: Final") in sidebar.calls and ("operator", "viewfinder.final_from_draft") not in sidebar.calls


class Layout:
    """Records what a panel draws: ("label", text) and ("operator", idname), from every row and column."""

    def __init__(self, calls: list[tuple[str, str]] | None = None) -> None:
        self.calls = [] if calls is None else calls

    def label(self, text: str = "", **_: Any) -> None:
        self.calls.append(("label", text))

    def operator(self, idname: str, **_: Any) -> None:
        self.calls.append(("operator", idname))

    def row(self, **_: Any) -> Layout:
        return Layout(self.calls)

    column = row
