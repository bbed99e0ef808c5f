"""Generate in real Blender against a real engine process with tiny random-weight models.

The engine runs from the *installed* extension's folder with the interpreter
in VIEWFINDER_TEST_ENGINE_PYTHON (the Makefile points it at .venv-engine).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import bpy
import pytest
from blender_scenes import add_camera, bind_marker, needs_engine, use_tiny_models

pytestmark = needs_engine()


def strips(scene):
    editor = scene.sequence_editor
    if editor is None:
        return []
    return list(editor.strips if hasattr(editor, "strips") else editor.sequences)


def take_strips(scene):
    return sorted((s for s in strips(scene) if s.get("viewfinder_kind") == "take"), key=lambda s: (s.frame_final_start, s.channel))


def build_film(tmp_path, tiny_models, name="film.blend"):
    """Three shots of a few frames each, looking at a few boxes, saved next to tmp_path."""
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x = scene.render.resolution_y = 100
    scene.frame_start, scene.frame_end = 1, 9
    for x in (-2.0, 0.0, 2.0):
        bpy.ops.mesh.primitive_cube_add(size=1.0, location=(x, 0.0, 0.0))
    for name_, frame, x in (("Wide", 1, 0.0), ("Close", 4, 1.0), ("Reverse", 7, -1.0)):
        cam = add_camera(scene, f"Cam{name_}", location=(x, -8.0, 0.0))
        # A truck across the shot: every frame's control maps differ.
        cam.keyframe_insert("location", frame=frame)
        cam.location.x += 0.6
        cam.keyframe_insert("location", frame=frame + 2)
        bind_marker(scene, name_, frame, cam)
    settings = scene.viewfinder
    use_tiny_models(settings, tiny_models)
    settings.long_edge, settings.steps, settings.batch_size = 64, 2, 4
    settings.style_prompt = "pencil sketch"
    for shot in settings.shots:
        shot.prompt = f"a street, {shot.name.lower()} shot"
        shot.coherence = "INDEPENDENT"
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / name))
    return bpy.context.scene


def test_generate_all_then_move_one_camera(tmp_path, tiny_models):
    scene = build_film(tmp_path, tiny_models)
    editor = scene.sequence_editor_create()
    own = (editor.strips if hasattr(editor, "strips") else editor.sequences).new_effect(
        name="My Title", type="COLOR", channel=1, frame_start=1,
        **({"length": 5} if bpy.app.version >= (4, 4) else {"frame_end": 6}))
    own_state = (own.channel, own.frame_final_start, own.frame_final_end, own.mute)

    assert bpy.ops.viewfinder.generate(shot="") == {"FINISHED"}
    takes = take_strips(scene)
    assert [(s.name, s.frame_final_start, s.frame_final_end - 1) for s in takes] == [
        ("Wide take 001", 1, 3), ("Close take 001", 4, 6), ("Reverse take 001", 7, 9)]
    for strip in takes:
        folder = Path(bpy.path.abspath(strip["viewfinder_take"]))
        info = json.loads((folder / "take.json").read_text())
        assert info["complete"] and info["style_prompt"] == "pencil sketch"
        assert sorted(p.name for p in folder.glob("*.png")) == [f"{f:04d}.png" for f in info["frames_total"]]
    assert (own.channel, own.frame_final_start, own.frame_final_end, own.mute) == own_state

    # Move one camera: that shot gets a new take on top, the others come from the cache.
    bpy.data.objects["CamClose"].delta_location.z += 1.5
    assert bpy.ops.viewfinder.generate(shot="") == {"FINISHED"}
    takes = take_strips(scene)
    assert len(takes) == 4
    close = [s for s in takes if s["viewfinder_shot"] == "Close"]
    assert [s.name for s in sorted(close, key=lambda s: s.channel)] == ["Close take 001", "Close take 002"]
    assert close[0].channel != close[1].channel
    newest = max(close, key=lambda s: s.channel)
    assert not newest.mute and all(s.mute for s in close if s != newest)
    assert (own.channel, own.frame_final_start, own.frame_final_end, own.mute) == own_state

    # Save and reload: strips and their take metadata survive.
    bpy.ops.wm.save_mainfile()
    path = bpy.data.filepath
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=path)
    reloaded = take_strips(bpy.context.scene)
    assert len(reloaded) == 4
    for strip in reloaded:
        assert (Path(bpy.path.abspath(strip["viewfinder_take"])) / "take.json").is_file()


def test_cancel_keeps_finished_frames_places_no_strip_and_resumes(tmp_path, tiny_models, vfmod):
    scene = build_film(tmp_path, tiny_models)
    # Slow enough that the cancel lands mid-shot: one frame per batch, many steps.
    scene.viewfinder.batch_size = 1
    scene.viewfinder.steps = 30
    generate, shot_job, engine_link, prefs_mod = (
        vfmod("core.generate.shot"), vfmod("core.generate.shot_job"), vfmod("core.client.link"), vfmod("preferences"))
    ops_common = vfmod("operators.common")
    prefs = prefs_mod.get_prefs(bpy.context)
    project = ops_common.project_of(bpy.context)
    shot = scene.viewfinder.shots["Wide"]
    job = shot_job.collect_shot(scene, shot, project, prefs)
    client = engine_link.connect(prefs)
    seen = []

    def cancel_after_first_frame():
        return bool(seen) and seen[-1].frames_done >= 1

    outcome = generate.run_shot(job, client, on_progress=seen.append, should_cancel=cancel_after_first_frame)
    assert outcome.cancelled and not outcome.complete
    assert 1 <= len(outcome.frames) < 3
    for frame in outcome.frames:
        assert (outcome.take_dir / f"{frame:04d}.png").is_file()
    assert shot_job.place_outcome(scene, outcome) is None
    assert take_strips(scene) == []

    # Generating again continues the same take rather than starting over.
    assert bpy.ops.viewfinder.generate(shot="Wide") == {"FINISHED"}
    (strip,) = take_strips(scene)
    assert Path(bpy.path.abspath(strip["viewfinder_take"])) == outcome.take_dir
    assert strip.name == "Wide take 001"


def test_unreachable_engine_reports_and_leaves_timeline_alone(tmp_path, tiny_models, monkeypatch, vfmod):
    scene = build_film(tmp_path, tiny_models)
    vfmod("core.client.process").shutdown_engine()
    monkeypatch.setenv("VIEWFINDER_ENGINE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("VIEWFINDER_ENGINE_TOKEN", "x")
    with pytest.raises(RuntimeError, match="not reachable"):
        bpy.ops.viewfinder.generate(shot="")
    assert take_strips(scene) == []


def test_unknown_model_is_named_and_nothing_half_made(tmp_path, tiny_models):
    scene = build_film(tmp_path, tiny_models)
    scene.viewfinder.model = str(tmp_path / "no-such-model")
    with pytest.raises(RuntimeError, match="no-such-model"):
        bpy.ops.viewfinder.generate(shot="Wide")
    assert take_strips(scene) == []


def test_unknown_shot_and_no_shots(tmp_path, tiny_models):
    build_film(tmp_path, tiny_models)
    with pytest.raises(RuntimeError, match="No shot named 'Nope'"):
        bpy.ops.viewfinder.generate(shot="Nope")
    bpy.ops.wm.read_homefile(use_empty=True)
    assert not bpy.ops.viewfinder.generate.poll()


def test_disk_full_keeps_earlier_takes(tmp_path, tiny_models, monkeypatch, vfmod):
    scene = build_film(tmp_path, tiny_models)
    assert bpy.ops.viewfinder.generate(shot="Wide") == {"FINISHED"}
    before = [(s.name, s.channel) for s in take_strips(scene)]
    client_mod = vfmod("core.client.http")

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(client_mod.EngineClient, "fetch_frame", full)
    scene.viewfinder.shots["Wide"].seed += 1
    with pytest.raises(RuntimeError, match="disk is full"):
        bpy.ops.viewfinder.generate(shot="Wide")
    assert [(s.name, s.channel) for s in take_strips(scene)] == before


def test_disabling_the_addon_stops_the_engine_and_generate_restarts_it(tmp_path, tiny_models, vf, vfmod):
    import addon_utils

    build_film(tmp_path, tiny_models)
    engine_process = vfmod("core.client.process")
    prefs = vfmod("preferences").get_prefs(bpy.context)
    vfmod("core.client.link").connect(prefs).health()
    process = engine_process._engine.local.process
    assert process.poll() is None
    addon_utils.disable(vf.__name__, default_set=True)
    try:
        assert process.wait(timeout=30) is not None  # the child is gone with the add-on
    finally:
        addon_utils.enable(vf.__name__, default_set=True)
    # A killed engine is noticed and started again on the next use.
    client = vfmod("core.client.link").connect(vfmod("preferences").get_prefs(bpy.context))
    engine_process._engine.local.process.kill()
    engine_process._engine.local.process.wait(timeout=30)
    client = vfmod("core.client.link").connect(vfmod("preferences").get_prefs(bpy.context))
    assert client.health()["status"] == "ok"


def test_too_small_frames_are_refused_before_any_rendering(tmp_path, tiny_models, vfmod):
    scene = build_film(tmp_path, tiny_models)
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080
    scene.viewfinder.long_edge = 64  # 64×32 (16:9, rounded to 8): below the models' 64 px
    size = vfmod("core.scene.resolution").generation_size
    smallest = min(e for e in range(64, 512, 8) if min(size(1920, 1080, 1, 1, e)) >= 64)
    assert min(size(1920, 1080, 1, 1, smallest - 8)) < 64
    with pytest.raises(RuntimeError, match=f"64×32 frames.*Long Edge to {smallest} or more"):
        bpy.ops.viewfinder.generate(shot="Wide")
    assert not (tmp_path / "viewfinder" / "Wide" / "conditioning").exists()
    assert take_strips(scene) == []
