"""Finalize Take in real Blender with tiny models and a real engine: a 2x final take above the
approved one, covering the same frames and scaled to fit; the 4x cap; a pickle upscaler refused;
deleted control maps re-rendered; cancel and resume; the animatic's draft/final report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bpy
import pytest
from blender_scenes import needs_engine, read_size, take_strips, truck_scene

pytestmark = needs_engine()


@pytest.fixture()
def approved(tmp_path: Path, tiny_models: Path, local_engine: None) -> dict[str, Any]:
    """A saved scene (output 384x216) with a generated 128x72 FLOW take of 3 frames, its strip active."""
    scene = truck_scene(tiny_models, size=(384, 216), last_frame=3, shift=0.5, wall=True)
    settings = scene.viewfinder
    settings.long_edge, settings.steps, settings.batch_size = 128, 2, 4
    shot = settings.shots[0]
    shot.prompt = "boxes in front of a wall"
    shot.coherence = "FLOW"
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "final.blend"))
    assert bpy.ops.viewfinder.generate(shot="") == {"FINISHED"}
    strips = take_strips(scene)
    assert len(strips) == 1
    scene.sequence_editor.active_strip = strips[0]
    return {"scene": scene, "strip": strips[0], "takes": tmp_path / "viewfinder" / "Truck" / "takes",
            "upscaler": str(tiny_models / "upscaler-x2.safetensors"), "root": tmp_path / "viewfinder"}


def test_finalize_take_makes_a_2x_final_take_above_the_approved_one(approved: dict[str, Any], vfmod: Any,
                                                                    capfd: pytest.CaptureFixture[str]) -> None:
    scene, strip = approved["scene"], approved["strip"]
    assert bpy.ops.viewfinder.finalize_take(factor="2", upscaler=approved["upscaler"]) == {"FINISHED"}
    # 1. A new take folder marked finalized, every frame at 2x.
    final_dir = approved["takes"] / "002"
    info = json.loads((final_dir / "take.json").read_text())
    assert info["complete"] and info["tier"] == "finalized" and info["settings"]["source_take"] == "001"
    assert info["settings"]["finalize"]["upscaler"] == approved["upscaler"]
    assert [read_size(final_dir / f"{n:04d}.png") for n in (1, 2, 3)] == [(256, 144)] * 3
    # 2. Its strip covers the same frames, one channel above, the approved one muted, scaled to fit 384x216.
    old, new = take_strips(scene)
    assert old == strip and old.mute and not new.mute and new.channel > old.channel
    assert (new.frame_final_start, new.frame_final_end) == (strip.frame_final_start, strip.frame_final_end)
    assert new.transform.scale_x == pytest.approx(1.5) and new.transform.scale_y == pytest.approx(1.5)
    assert new["viewfinder_tier"] == "finalized"
    # 3. The animatic now uses the final take for this shot: no drafts left to report.
    exports = vfmod("core.timeline.exports")
    assert exports.unfinalized_shots(scene) == [] and exports.final_strip(scene, "Truck") == new
    # 4. 4x would be 512x288, above the scene's 384x216: capped, with the reason.
    scene.sequence_editor.active_strip = strip
    capfd.readouterr()
    assert bpy.ops.viewfinder.finalize_take(factor="4", upscaler=approved["upscaler"]) == {"FINISHED"}
    assert "capped at 384×216 (3.00×)" in capfd.readouterr().err
    assert read_size(approved["takes"] / "003" / "0002.png") == (384, 216)
    assert take_strips(scene)[-1].transform.scale_x == pytest.approx(1.0)


def test_bad_input_pickle_upscaler_and_deleted_maps(approved: dict[str, Any], vfmod: Any,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    scene = approved["scene"]
    # A pickle upscaler: refused before anything is rendered or sent, naming the fix.
    with pytest.raises(RuntimeError, match=r"pickle-based \.pth file.*\.safetensors"):
        bpy.ops.viewfinder.finalize_take(factor="2", upscaler="/tmp/models/RealESRGAN_x4plus.pth")
    assert sorted(p.name for p in approved["takes"].iterdir()) == ["001"]
    # Finalize once, then delete some control maps at the final size: they are re-rendered, with a message.
    assert bpy.ops.viewfinder.finalize_take(factor="2") == {"FINISHED"}
    maps = approved["root"] / "Truck" / "conditioning-256x144"
    (maps / "depth" / "0002.png").unlink()
    (maps / "flow" / "0003.npy").unlink()
    scene.sequence_editor.active_strip = approved["strip"]
    capfd.readouterr()
    assert bpy.ops.viewfinder.finalize_take(factor="2") == {"FINISHED"}
    err = capfd.readouterr().err
    assert "control maps of frames [2, 3] at 256×144 were deleted: re-rendered" in err
    assert (maps / "depth" / "0002.png").is_file() and (maps / "flow" / "0003.npy").is_file()
    # Same maps, same request: the existing final take is reused, not made again.
    assert sorted(p.name for p in approved["takes"].iterdir()) == ["001", "002"]


def test_cancelled_finalize_resumes_where_it_stopped(approved: dict[str, Any], vfmod: Any) -> None:
    finalize, generate, engine_link = vfmod("core.jobs.finalize"), vfmod("core.generate.shot"), vfmod("core.client.link")
    prefs = vfmod("preferences").get_prefs(bpy.context)
    project = vfmod("operators.common").project_of(bpy.context)
    plan = finalize.collect_finalize(approved["scene"], approved["takes"] / "001", project, prefs, factor=2,
                                     detail_strength=0.9)
    plan.job.request.steps = 12  # slow enough to cancel mid-take
    client = engine_link.connect(prefs)
    seen: list[int] = []
    outcome = generate.run_shot(plan.job, client, on_progress=lambda p: seen.append(p.frames_done),
                                should_cancel=lambda: bool(seen) and seen[-1] >= 1)
    assert outcome.cancelled and 1 <= len(outcome.frames) < 3
    info = json.loads((outcome.take_dir / "take.json").read_text())
    assert not info["complete"] and info["cancelled"] and info["tier"] == "finalized"
    kept = sorted(p.name for p in outcome.take_dir.glob("*.png"))
    # The same request again continues the same take folder; the engine serves the finished frames.
    resumed = generate.run_shot(plan.job, client)
    assert resumed.complete and resumed.take_dir == outcome.take_dir and resumed.frames == [1, 2, 3]
    assert set(kept) <= {p.name for p in resumed.take_dir.glob("*.png")}
    assert finalize.place_final(approved["scene"], resumed).transform.scale_x == pytest.approx(1.5)


