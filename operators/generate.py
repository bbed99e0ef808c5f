"""`viewfinder.generate`: shots → control maps → engine → takes on the VSE.

`execute` runs to completion (background mode, scripts, render farms: timers
never fire there). `invoke` + `modal` keep the UI responsive: control maps are
rendered on the main thread (bpy), the engine job runs on a worker thread that
never touches bpy and posts `Progress` / `TakeOutcome` messages on a queue,
and a timer drains it. Esc cancels within a denoising step and keeps every
finished frame; no strip is placed for an unfinished take.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
import traceback
from typing import Any

import bpy
from bpy.props import StringProperty

from ..core import engine_link
from ..core.generate import GenerationError, Progress, TakeOutcome
from ..core.generate_all import ShotFailure, run_shots
from ..core.shot_job import collect_shot, place_outcome
from ..preferences import Prefs, get_prefs
from .common import NeedsShots, project_of, report, resolve_shots

log = logging.getLogger(__name__)


def _summary(outcome: TakeOutcome) -> str:
    if outcome.reused:
        return f"Shot '{outcome.shot}': unchanged, take {outcome.info.take} reused from the cache"
    if outcome.complete:
        notes = "".join(f"; {note}" for note in outcome.info.notes)
        return f"Shot '{outcome.shot}': take {outcome.info.take} ({len(outcome.frames)} frames){notes}"
    if outcome.cancelled:
        return (
            f"Shot '{outcome.shot}': cancelled after {len(outcome.frames)} frames "
            f"(kept in {outcome.take_dir}; Generate again to continue)"
        )
    return f"Shot '{outcome.shot}' failed: {outcome.error}"


class VIEWFINDER_OT_generate(NeedsShots, bpy.types.Operator):
    """Generate takes for a shot (or all shots) and place them on the Sequencer"""

    bl_idname = "viewfinder.generate"
    bl_label = "Generate"
    # No UNDO: the take files stay on disk whatever undo does; the strip is
    # ordinary data the user can undo after the fact.
    bl_options = {"REGISTER"}

    shot: StringProperty(name="Shot", description="Shot name; empty: all shots")

    _timer: Any = None
    _thread: threading.Thread | None = None

    # -- blocking path ---------------------------------------------------

    def execute(self, context: bpy.types.Context) -> set[str]:
        shots, error = resolve_shots(context.scene, self.shot)
        if error:
            report(self, "ERROR", error)
            return {"CANCELLED"}
        project = project_of(context)
        prefs = get_prefs(context)
        if project.temporary:
            report(self, "WARNING", f"Unsaved file: frames go to {project.describe()}")
        try:
            client = engine_link.connect(prefs)
            client.health()  # fail once, before rendering any control maps
        except Exception as exc:  # EngineError and anything the process start raises
            report(self, "ERROR", str(exc))
            return {"CANCELLED"}
        failures = 0
        # 1. Control maps for every shot (bpy, this thread), then 2. every shot's engine job
        #    at once (a cluster engine runs them side by side); takes placed as jobs finish.
        jobs = []
        for shot in shots:
            try:
                job = collect_shot(context.scene, shot, project, prefs)
                for warning in job.warnings:  # animated settings: clamped values, all-zero weights
                    report(self, "WARNING", warning)
                jobs.append(job)
            except Exception as exc:
                failures += 1
                log.debug("control maps failed", exc_info=True)
                report(self, "ERROR", _message(shot.name, exc))
        for outcome in run_shots(jobs, client, on_progress=_log_progress):
            try:
                if isinstance(outcome, ShotFailure):
                    raise outcome.error
                place_outcome(context.scene, outcome)
            except Exception as exc:
                failures += 1
                log.debug("generation failed", exc_info=True)
                report(self, "ERROR", _message(outcome.shot, exc))
                continue
            if outcome.error:
                failures += 1
                report(self, "ERROR", _summary(outcome))
            else:
                report(self, "INFO", _summary(outcome))
        return {"FINISHED"} if failures < len(shots) else {"CANCELLED"}

    # -- modal path ------------------------------------------------------

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if bpy.app.background:
            return self.execute(context)
        shots, error = resolve_shots(context.scene, self.shot)
        if error:
            report(self, "ERROR", error)
            return {"CANCELLED"}
        self._pending = [s.name for s in shots]
        self._total = len(shots)
        self._project = project_of(context)
        self._prefs: Prefs = get_prefs(context)
        self._messages: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._thread = None
        self._jobs: list[Any] = []
        self._fractions: dict[str, float] = {}
        self._results: list[TakeOutcome] = []
        if self._project.temporary:
            report(self, "WARNING", f"Unsaved file: frames go to {self._project.describe()}")
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 100)
        self._status(context, "starting")
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if event.type == "ESC" and event.value == "PRESS":
            self._cancel.set()
            self._pending.clear()
            self._status(context, "cancelling…")
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        # 1. Drain the worker's messages (main thread: safe to touch bpy); a worker that has
        #    ended posted all of its messages before, so none is left behind.
        ended = self._thread is not None and not self._thread.is_alive()
        while True:
            try:
                message = self._messages.get_nowait()
            except queue.Empty:
                break
            if isinstance(message, Progress):
                self._show_progress(context, message)
            elif isinstance(message, TakeOutcome):
                self._apply(context, message)
            elif isinstance(message, Exception):
                report(self, "ERROR", str(message))
        if ended:
            return self._finish(context)
        if self._thread is not None:
            return {"RUNNING_MODAL"}
        # 2. Next shot's control maps here (bpy), one shot a tick; then every shot's engine job
        #    at once on a worker (core/generate_all.py), takes placed as they finish.
        while self._pending and not self._cancel.is_set():
            name = self._pending.pop(0)
            shot = context.scene.viewfinder.shots.get(name)
            if shot is None:
                report(self, "WARNING", f"Shot '{name}' disappeared while generating: skipped")
                continue
            self._status(context, f"shot {self._total - len(self._pending)} of {self._total}: control maps")
            try:
                # Control maps need bpy, so they render here, blocking; the cursor shows progress.
                base = (self._total - len(self._pending) - 1) / max(1, self._total)

                def maps_progress(done: int, total: int, wm: Any = context.window_manager, base: float = base) -> None:
                    wm.progress_update(int(100 * (base + 0.1 * done / max(1, total) / max(1, self._total))))

                job = collect_shot(context.scene, shot, self._project, self._prefs, progress=maps_progress,
                                   cancel=self._cancel.is_set)
            except Exception as exc:
                report(self, "ERROR", _message(name, exc))
                continue
            for warning in job.warnings:  # animated settings: clamped values, all-zero weights
                report(self, "WARNING", warning)
            self._jobs.append(job)
            return {"RUNNING_MODAL"}
        if not self._jobs or self._cancel.is_set():
            return self._finish(context)
        self._status(context, f"{len(self._jobs)} shot(s) sent to the engine")
        self._thread = threading.Thread(target=self._work, args=(self._jobs,), name="viewfinder-generate",
                                        daemon=True)
        self._thread.start()
        return {"RUNNING_MODAL"}

    def _work(self, jobs: list[Any]) -> None:
        """Worker thread: connect, run every shot's engine job at once, post messages. Never touches bpy."""
        try:
            client = engine_link.connect(self._prefs)
            for outcome in run_shots(jobs, client, on_progress=self._messages.put, should_cancel=self._cancel.is_set):
                if isinstance(outcome, ShotFailure):
                    self._messages.put(GenerationError(_message(outcome.shot, outcome.error)))
                else:
                    self._messages.put(outcome)
        except Exception as exc:
            log.debug("worker failed: %s", traceback.format_exc())
            self._messages.put(GenerationError(_message(jobs[0].shot if len(jobs) == 1 else "all", exc)))

    def _apply(self, context: bpy.types.Context, outcome: TakeOutcome) -> None:
        self._results.append(outcome)
        try:
            place_outcome(context.scene, outcome)
        except Exception as exc:
            report(self, "ERROR", _message(outcome.shot, exc))
            return
        report(self, "ERROR" if outcome.error else "INFO", _summary(outcome))

    def _show_progress(self, context: bpy.types.Context, p: Progress) -> None:
        # Shots run at once: the bar is the mean of their fractions, the text the latest news.
        self._fractions[p.shot] = p.frames_done / p.frames_total if p.frames_total else 0.0
        running = sum(1 for f in self._fractions.values() if f < 1.0)
        text = f"'{p.shot}': frame {p.frames_done} of {p.frames_total}"
        if p.message:
            text += f", {p.message}"
        if p.steps:
            text += f", step {p.step}/{p.steps}"
        if p.eta_s:
            text += f", about {int(p.eta_s)} s left"
        self._status(context, f"{running} of {self._total} shots running; {text}")
        done = sum(self._fractions.values()) / max(1, self._total)
        context.window_manager.progress_update(int(100 * done))

    def _status(self, context: bpy.types.Context, text: str) -> None:
        if context.workspace is not None:
            context.workspace.status_text_set(f"Viewfinder: {text} — Esc to cancel")

    def _finish(self, context: bpy.types.Context) -> set[str]:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        if self._cancel.is_set():
            report(self, "WARNING", "Generation cancelled: finished takes kept")
        return {"FINISHED"}

    def cancel(self, context: bpy.types.Context) -> None:
        # Blender is closing the operator (file load, quit): stop the worker too.
        self._cancel.set()
        self._finish(context)


def _message(shot_name: str, exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" writing {exc.filename}" if exc.filename else ""
        text = f"the disk is full{where}: free some space, or choose another Output Folder in the preferences"
    else:
        text = str(exc) or exc.__class__.__name__
    return text if shot_name in text else f"Shot '{shot_name}': {text}"


def _log_progress(p: Progress) -> None:
    log.info("%s: %d/%d frames", p.shot, p.frames_done, p.frames_total)


classes = (VIEWFINDER_OT_generate,)
register, unregister = bpy.utils.register_classes_factory(classes)
