"""The generation state machine (core/generate_run.GenerationRun), driven tick by tick in real
Blender against a real engine process with tiny random-weight models: a cancel after a given
tick in each phase, execute against the tick-driven path, and the progress text.

Install Engine and Restart Engine (operators/engine.py, on core.worker.Worker) are driven with
a stand-in context and events: modal operators cannot run in background Blender.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import bpy
import pytest
from blender_scenes import needs_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_conditioning import snapshot  # noqa: E402
from test_generate import build_film, take_strips  # noqa: E402


def make_run(vfmod, scene, *, hold_settings=False, background=False, engine_thread=False):
    """A run as the UI makes it, except that by default its engine steps run a step a tick on
    this thread, so that the tests can cancel after a given step (engine_thread=True: the UI's
    own configuration, the engine steps on a worker thread)."""
    run_mod = vfmod("core.generate.run")
    project = vfmod("operators.common").project_of(bpy.context)
    prefs = vfmod("preferences").get_prefs(bpy.context)
    return run_mod.GenerationRun([s.name for s in scene.viewfinder.shots], project, prefs,
                                 hold_settings=hold_settings, background=background, engine_thread=engine_thread)


def drive(vfmod, run, scene, *, cancel_when=None, limit=20000):
    """Tick to the end; cancel right after the first tick after which `cancel_when(run, kinds)` holds.
    Returns the step kinds of every tick and the statuses shown."""
    run_mod = vfmod("core.generate.run")
    kinds, statuses = [], []
    for _ in range(limit):
        state = run.tick(scene)
        kinds.append(run.step_kind)
        statuses.append(run.status())
        if state == run_mod.DONE:
            return kinds, statuses
        if cancel_when is not None and not run.cancelled and cancel_when(run, kinds):
            run.cancel()
        if state == run_mod.IDLE:
            time.sleep(0.05)
    raise AssertionError(f"the run did not end in {limit} ticks: {kinds[-20:]}")


def after(kind, nth=1):
    return lambda run, kinds: kinds[-1] == kind and kinds.count(kind) == nth


def conditioning_folders(tmp_path):
    root = tmp_path / "viewfinder"
    return sorted(p for p in root.rglob("*") if p.is_dir() and "conditioning" in p.name) if root.exists() else []


def assert_nothing_half_made(tmp_path, scene):
    for folder in conditioning_folders(tmp_path):
        assert not folder.name.startswith("."), f"half-rendered folder left: {folder}"
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["complete"] is True and len(list((folder / "depth").glob("*.png"))) == len(meta["frames"])
    for strip in take_strips(scene):  # no strip for an unfinished take
        info = json.loads((Path(bpy.path.abspath(strip["viewfinder_take"])) / "take.json").read_text())
        assert info["complete"], strip.name


pytestmark = needs_engine()


@pytest.mark.parametrize("hold_settings", [False, True], ids=["ui", "background"])
def test_cancel_during_control_maps_restores_settings_and_leaves_no_folder(tmp_path, tiny_models, vfmod,
                                                                           hold_settings):
    scene = build_film(tmp_path, tiny_models)
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.filepath = "//user_output/"
    scene.cycles.samples = 77
    scene.frame_set(5)
    before = snapshot(scene)
    run = make_run(vfmod, scene, hold_settings=hold_settings)
    first_frame = lambda run, kinds: run.rendering is not None and run.rendering.frames_rendered == 1  # noqa: E731
    kinds, statuses = drive(vfmod, run, scene, cancel_when=first_frame)
    assert set(kinds) == {"connect", "maps", "cancel"} and kinds[-1] == "cancel"
    assert statuses[-2] == "Shot 1/3 · control maps 1/3"
    assert snapshot(scene) == before
    assert conditioning_folders(tmp_path) == []  # nothing claims to be complete, no temporary folder either
    assert not (tmp_path / "user_output").exists()
    assert take_strips(scene) == [] and run.outcomes == []
    assert ("WARNING", "Generation cancelled: finished takes kept") in run.reports


def test_between_ticks_the_user_sees_their_own_settings(tmp_path, tiny_models, vfmod):
    scene = build_film(tmp_path, tiny_models)
    scene.frame_set(2)
    before = snapshot(scene)
    run = make_run(vfmod, scene)
    run_mod = vfmod("core.generate.run")
    statuses = []
    while run.phase in ("connect", "maps"):
        assert run.tick(scene) != run_mod.DONE
        statuses.append(run.status())
        assert snapshot(scene) == before  # the UI path gives everything back after each tick
    for number in (1, 2, 3):  # one frame a tick, three frames a shot; then one depth map a tick
        head = f"Shot {number}/3 · "
        assert [s for s in statuses if s.startswith(head) and "maps " in s] == [
            f"{head}control maps 0/3", f"{head}control maps 1/3", f"{head}control maps 2/3",
            f"{head}depth maps 0/3", f"{head}depth maps 1/3", f"{head}depth maps 2/3"]
    drive(vfmod, run, scene)
    assert len(take_strips(scene)) == 3 and snapshot(scene) == before


def test_cancel_during_upload_sends_nothing_and_places_nothing(tmp_path, tiny_models, vfmod):
    scene = build_film(tmp_path, tiny_models)
    run = make_run(vfmod, scene)
    kinds, _ = drive(vfmod, run, scene, cancel_when=after("upload", 2))
    assert "poll" not in kinds  # no job was submitted after the cancel
    assert take_strips(scene) == []
    assert [o.cancelled for o in run.outcomes] == [True, True, True]
    for outcome in run.outcomes:  # the take folder stays, saying it was cancelled (Generate again resumes)
        info = json.loads((outcome.take_dir / "take.json").read_text())
        assert info["cancelled"] and not info["complete"]
    assert_nothing_half_made(tmp_path, scene)


def test_cancel_while_polling_keeps_finished_takes_and_places_no_partial_strip(tmp_path, tiny_models, vfmod):
    scene = build_film(tmp_path, tiny_models)
    scene.viewfinder.batch_size, scene.viewfinder.steps = 1, 12  # jobs that outlast a few polls
    run = make_run(vfmod, scene)
    kinds, statuses = drive(vfmod, run, scene, cancel_when=after("poll"))
    assert kinds.index("poll") > kinds.index("upload")
    assert any(re.fullmatch(r"Shot [123]/3 · frame [0-3]/3, step \d+/12.*", s) for s in statuses), statuses[-5:]
    assert len(run.outcomes) == 3
    complete = [o for o in run.outcomes if o.complete]
    assert len(complete) < 3 and any(o.cancelled for o in run.outcomes)
    assert sorted(s["viewfinder_shot"] for s in take_strips(scene)) == sorted(o.shot for o in complete)
    for outcome in run.outcomes:
        if outcome.cancelled:  # finished frames kept on disk, take.json says so
            assert sorted(p.name for p in outcome.take_dir.glob("*.png")) == [f"{f:04d}.png" for f in outcome.frames]
    assert_nothing_half_made(tmp_path, scene)


def test_cancel_with_the_engine_on_its_thread_keeps_finished_takes(tmp_path, tiny_models, vfmod):
    scene = build_film(tmp_path, tiny_models)
    scene.viewfinder.batch_size, scene.viewfinder.steps = 1, 12  # jobs that outlast a few polls
    run = make_run(vfmod, scene, engine_thread=True)
    running = lambda run, kinds: run._latest is not None and run._latest.step > 0  # noqa: E731
    kinds, statuses = drive(vfmod, run, scene, cancel_when=running)
    assert any(re.fullmatch(r"Shot [123]/3 · frame [0-3]/3, step \d+/12.*", s) for s in statuses), statuses[-5:]
    assert len(run.outcomes) == 3 and any(o.cancelled for o in run.outcomes)
    complete = [o for o in run.outcomes if o.complete]
    assert sorted(s["viewfinder_shot"] for s in take_strips(scene)) == sorted(o.shot for o in complete)
    for outcome in run.outcomes:
        if outcome.cancelled:  # finished frames kept on disk, take.json says so
            assert sorted(p.name for p in outcome.take_dir.glob("*.png")) == [f"{f:04d}.png" for f in outcome.frames]
    assert run.reports[-1] == ("WARNING", "Generation cancelled: finished takes kept")
    assert_nothing_half_made(tmp_path, scene)


def test_cancel_after_placing_one_take_keeps_it(tmp_path, tiny_models, vfmod):
    scene = build_film(tmp_path, tiny_models)
    run = make_run(vfmod, scene)
    kinds, _ = drive(vfmod, run, scene, cancel_when=after("place"))
    assert kinds.count("place") >= 1
    placed = take_strips(scene)
    assert len(placed) >= 1 and len(placed) == len([o for o in run.outcomes if o.complete])
    first = run.outcomes[0]
    assert first.complete and placed[0]["viewfinder_shot"] in {o.shot for o in run.outcomes if o.complete}
    assert_nothing_half_made(tmp_path, scene)


@contextlib.contextmanager
def engine_calls(vfmod):
    """Every HTTP call the add-on makes to the engine meanwhile: (path, made on Blender's main thread)."""
    client_class = vfmod("core.client.http").EngineClient
    calls, request = [], client_class._request

    def recording(self, method, path, **kwargs):
        calls.append((path, threading.current_thread() is threading.main_thread()))
        return request(self, method, path, **kwargs)

    client_class._request = recording
    try:
        yield calls
    finally:
        client_class._request = request


def test_execute_makes_the_same_takes_as_the_tick_driven_path(tmp_path, tiny_models, vfmod):
    (tmp_path / "ticks").mkdir()
    (tmp_path / "execute").mkdir()
    scene = build_film(tmp_path / "ticks", tiny_models)
    # The UI's configuration: connect and engine steps on workers, settings given back each tick.
    run = make_run(vfmod, scene, engine_thread=True)
    with engine_calls(vfmod) as calls:
        kinds, _ = drive(vfmod, run, scene)
    ticked = {o.shot: o.take_dir for o in run.outcomes}
    assert len(ticked) == 3 and all(o.complete and not o.reused for o in run.outcomes)
    # No upload, submit, poll or frame download held a tick: a slow or shared network never
    # freezes Blender. The ticks only placed the takes.
    assert {p.split("/")[1] for p, _ in calls} >= {"blobs", "jobs"}
    assert not [p for p, on_main in calls if on_main], calls
    assert kinds.count("place") == 3 and not {"upload", "poll"} & set(kinds)

    scene = build_film(tmp_path / "execute", tiny_models)
    assert bpy.ops.viewfinder.generate(shot="") == {"FINISHED"}
    executed = {s["viewfinder_shot"]: Path(bpy.path.abspath(s["viewfinder_take"])) for s in take_strips(scene)}
    assert sorted(executed) == sorted(ticked) == ["Close", "Reverse", "Wide"]
    for shot, folder in executed.items():
        assert folder != ticked[shot]
        frames = sorted(p.name for p in folder.glob("*.png"))
        assert frames == sorted(p.name for p in ticked[shot].glob("*.png")) and len(frames) == 3
        for name in frames:
            assert (folder / name).read_bytes() == (ticked[shot] / name).read_bytes(), (shot, name)
        for name in ("depth", "masks"):  # the control maps too
            a, b = folder.parents[1] / "conditioning" / name, ticked[shot].parents[1] / "conditioning" / name
            assert [p.read_bytes() for p in sorted(a.glob("*.png"))] == [p.read_bytes() for p in sorted(b.glob("*.png"))]


def test_cached_shots_answer_from_the_take_cache_through_the_ticks(tmp_path, tiny_models, vfmod):
    scene = build_film(tmp_path, tiny_models)
    assert bpy.ops.viewfinder.generate(shot="") == {"FINISHED"}
    run = make_run(vfmod, scene)
    kinds, _ = drive(vfmod, run, scene)
    assert [o.reused for o in run.outcomes] == [True, True, True]
    assert "poll" not in kinds  # no job sent: the takes are on disk
    assert len(take_strips(scene)) == 3


@pytest.mark.parametrize("background", [False, True], ids=["ui", "background"])
def test_unreachable_engine_stops_the_run(tmp_path, tiny_models, monkeypatch, vfmod, background):
    scene = build_film(tmp_path, tiny_models)
    scene.frame_set(scene.frame_current)  # evaluated: the snapshot compares evaluated transforms
    vfmod("core.client.process").shutdown_engine()
    monkeypatch.setenv("VIEWFINDER_ENGINE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("VIEWFINDER_ENGINE_TOKEN", "x")
    before = snapshot(scene)
    run = make_run(vfmod, scene, background=background)
    kinds, _ = drive(vfmod, run, scene)
    if background:  # connected on this thread first: failed before any control map
        assert kinds == ["connect", ""]
    assert [level for level, _ in run.reports] == ["ERROR"] and "not reachable" in run.reports[0][1]
    assert snapshot(scene) == before and conditioning_folders(tmp_path) == [] and take_strips(scene) == []


# -- Install Engine and Restart Engine on the worker -------------------------------------------


class _WindowManager:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def event_timer_add(self, _interval, window=None):
        self.calls.append("timer_add")
        return "timer"

    def event_timer_remove(self, _timer):
        self.calls.append("timer_remove")

    def modal_handler_add(self, _op):
        self.calls.append("modal")

    def progress_begin(self, *_a):
        self.calls.append("progress_begin")

    def progress_update(self, value):
        self.calls.append(f"progress {value}")

    def progress_end(self):
        self.calls.append("progress_end")


class _Workspace:
    def __init__(self) -> None:
        self.texts: list[str | None] = []

    def status_text_set(self, text):
        self.texts.append(text)


def standin(operator_class):
    """An object with the operator's Python methods (bpy operators cannot be made by hand)."""
    namespace = {}
    for klass in reversed(operator_class.__mro__):
        if klass.__module__.startswith("bpy") or klass is object:
            continue
        namespace.update({k: v for k, v in vars(klass).items() if not k.startswith(("__", "bl_"))})
    reports = []
    namespace["report"] = lambda self, levels, text: reports.append((next(iter(levels)), text))
    namespace["runs_here"] = lambda self: False  # as in the UI: background Blender would run the task here
    return type("Standin", (), namespace)(), reports


def timer_until_done(op, context, limit_s=120.0):
    timer = SimpleNamespace(type="TIMER", value="NOTHING")
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        result = op.modal(context, timer)
        if result != {"RUNNING_MODAL"}:
            return result
        time.sleep(0.05)
    raise AssertionError("the worker never finished")


def test_restart_engine_returns_at_once_and_reports_through_the_worker(tmp_path, vfmod, monkeypatch):
    go = tmp_path / "go"
    fake = tmp_path / "fake-python"
    fake.write_text(f"#!/bin/sh\nwhile [ ! -e '{go}' ]; do sleep 0.05; done\necho 'fake engine gives up'\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("VIEWFINDER_ENGINE_PYTHON", str(fake))
    monkeypatch.delenv("VIEWFINDER_ENGINE_URL", raising=False)
    op, reports = standin(vfmod("operators.engine").VIEWFINDER_OT_restart_engine)
    wm, workspace = _WindowManager(), _Workspace()
    context = SimpleNamespace(window_manager=wm, workspace=workspace, window=None,
                              preferences=bpy.context.preferences)
    assert op.invoke(context, None) == {"RUNNING_MODAL"}  # returned while the engine is still starting
    assert op._worker.is_alive() and wm.calls == ["timer_add", "modal"]
    assert op.modal(context, SimpleNamespace(type="TIMER", value="NOTHING")) == {"RUNNING_MODAL"}
    assert reports == []
    go.touch()
    try:
        assert timer_until_done(op, context) == {"CANCELLED"}
    finally:
        vfmod("core.client.process").shutdown_engine()
    ((level, text),) = reports
    assert level == "ERROR" and "fake engine gives up" in text
    assert wm.calls[-1] == "timer_remove" and workspace.texts[-1] is None
    assert any(t and "Restarting engine: starting the engine" in t for t in workspace.texts)


def test_install_engine_returns_at_once_and_reports_through_the_worker(tmp_path, vfmod, monkeypatch):
    install_mod = vfmod("core.client.install")
    release = __import__("threading").Event()

    def fake_install(venv_dir, cancel=None, **_kwargs):
        yield install_mod.InstallProgress(0.05, "Collecting torch")
        assert release.wait(60)
        yield install_mod.InstallProgress(1.0, f"Engine installed: {venv_dir}/bin/python")

    monkeypatch.setattr(install_mod, "install_engine", fake_install)
    engine_ops = vfmod("operators.engine")
    monkeypatch.setattr(engine_ops, "engine_venv_dir", lambda: str(tmp_path / "venv"))
    op, reports = standin(engine_ops.VIEWFINDER_OT_install_engine)
    wm, workspace = _WindowManager(), _Workspace()
    context = SimpleNamespace(window_manager=wm, workspace=workspace, window=None)
    assert op.invoke(context, None) == {"RUNNING_MODAL"}
    assert op._worker.is_alive()
    deadline = time.monotonic() + 30
    while "progress 5" not in wm.calls and time.monotonic() < deadline:
        assert op.modal(context, SimpleNamespace(type="TIMER", value="NOTHING")) == {"RUNNING_MODAL"}
        time.sleep(0.02)
    assert "Installing engine: 5%: Collecting torch — Esc to cancel" in workspace.texts
    release.set()
    assert timer_until_done(op, context) == {"FINISHED"}
    assert reports == [("INFO", f"Engine installed ({tmp_path / 'venv' / 'bin' / 'python'}): Generate will start it")]
    assert wm.calls[-2:] == ["timer_remove", "progress_end"]


def test_install_engine_esc_cancels_the_worker(tmp_path, vfmod, monkeypatch):
    install_mod = vfmod("core.client.install")

    def fake_install(venv_dir, cancel=None, **_kwargs):
        yield install_mod.InstallProgress(0.05, "Collecting torch")
        assert cancel.wait(60)
        raise install_mod.InstallCancelled("engine installation cancelled")

    monkeypatch.setattr(install_mod, "install_engine", fake_install)
    engine_ops = vfmod("operators.engine")
    monkeypatch.setattr(engine_ops, "engine_venv_dir", lambda: str(tmp_path / "venv"))
    op, reports = standin(engine_ops.VIEWFINDER_OT_install_engine)
    context = SimpleNamespace(window_manager=_WindowManager(), workspace=_Workspace(), window=None)
    assert op.invoke(context, None) == {"RUNNING_MODAL"}
    assert op.modal(context, SimpleNamespace(type="ESC", value="PRESS")) == {"PASS_THROUGH"}
    assert timer_until_done(op, context) == {"CANCELLED"}
    assert reports == [("ERROR", "Engine install stopped: engine installation cancelled")]
    assert not os.path.exists(tmp_path / "venv")


# -- Generate's modal path: the same run, ticked from timer events ----------------------------


def generate_modal(vfmod, scene):
    op, reports = standin(vfmod("operators.generate").VIEWFINDER_OT_generate)
    op._run, op._timer = make_run(vfmod, scene), "timer"
    wm, workspace = _WindowManager(), _Workspace()
    context = SimpleNamespace(scene=scene, window_manager=wm, workspace=workspace, window=None)
    return op, reports, context, workspace


def test_modal_ticks_the_run_from_timer_events_and_places_every_take(tmp_path, tiny_models, vfmod):
    scene = build_film(tmp_path, tiny_models)
    op, reports, context, workspace = generate_modal(vfmod, scene)
    assert op.modal(context, SimpleNamespace(type="MOUSEMOVE", value="NOTHING")) == {"PASS_THROUGH"}
    assert timer_until_done(op, context, limit_s=600) == {"FINISHED"}
    assert len(take_strips(scene)) == 3
    assert sorted(text for level, text in reports) == [
        "Shot 'Close': take 001 (3 frames)", "Shot 'Reverse': take 001 (3 frames)", "Shot 'Wide': take 001 (3 frames)"]
    texts = [t for t in workspace.texts if t]
    # Which frame a status shows depends on how many ticks fit in one timer event's budget (20 ms).
    assert any(re.fullmatch(r"Viewfinder: Shot [123]/3 · control maps [0-3]/3 — Esc to cancel", t) for t in texts)
    assert {re.match(r"Viewfinder: Shot (\d)/3", t).group(1) for t in texts if re.match(r"Viewfinder: Shot \d/3", t)} \
        == {"1", "2", "3"}
    # After a shot's first frame the engine also gives an estimate (", about 2 s left").
    assert any(re.fullmatch(r"Viewfinder: Shot [123]/3 · frame [0-3]/3, step [0-2]/2(, about \d+ s left)? — Esc to cancel",
                            t) for t in texts), texts[-8:]
    assert workspace.texts[-1] is None and context.window_manager.calls[-2:] == ["timer_remove", "progress_end"]


def test_esc_in_the_modal_stops_at_the_next_tick(tmp_path, tiny_models, vfmod):
    scene = build_film(tmp_path, tiny_models)
    scene.frame_set(scene.frame_current)
    before = snapshot(scene)
    op, reports, context, workspace = generate_modal(vfmod, scene)
    timer = SimpleNamespace(type="TIMER", value="NOTHING")
    while op._run.rendering is None or op._run.rendering.frames_rendered < 1:
        assert op.modal(context, timer) == {"RUNNING_MODAL"}
    assert op.modal(context, SimpleNamespace(type="ESC", value="PRESS")) == {"PASS_THROUGH"}
    assert workspace.texts[-1] == "Viewfinder: cancelling… — Esc to cancel"
    assert op.modal(context, timer) == {"FINISHED"}
    assert reports == [("WARNING", "Generation cancelled: finished takes kept")]
    assert snapshot(scene) == before and conditioning_folders(tmp_path) == [] and take_strips(scene) == []
