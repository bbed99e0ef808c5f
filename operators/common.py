"""Helpers shared by operators: the project folder, shot lookup, reporting, the modal engine-job loop."""

from __future__ import annotations

import queue
import sys
import threading
from typing import Any

import bpy

from ..core import engine_link, paths
from ..core import shots as shots_core
from ..core.generate import Progress, run_shot
from ..preferences import get_prefs


def project_of(context: bpy.types.Context) -> paths.Project:
    """The project folder for the open .blend (temporary when unsaved)."""
    return paths.project_for(bpy.data.filepath, context.scene.name, get_prefs(context).output_dir)


def resolve_shots(scene: bpy.types.Scene, shot_name: str) -> tuple[list[Any], str]:
    """The shots an operator's `shot` argument names ("" = all), or an error message.

    Shots with problems are returned too: callers skip them and report why.
    """
    shots = list(scene.viewfinder.shots)
    problems = shots_core.plan_for_scene(scene).problems
    if problems:
        return [], problems[0]
    if not shot_name:
        if not shots:
            return [], "No shots: bind a camera to a timeline marker (Marker ▸ Bind Camera to Markers)"
        return shots, ""
    match = [s for s in shots if s.name == shot_name]
    if not match:
        names = ", ".join(f"'{s.name}'" for s in shots) or "none"
        return [], f"No shot named '{shot_name}' (shots: {names})"
    return match, ""


def report(operator: bpy.types.Operator, level: str, message: str) -> None:
    """Report in Blender's UI, and on stderr in background mode where no one sees the UI."""
    operator.report({level}, message)
    if bpy.app.background:
        print(f"Viewfinder {level.lower()}: {message}", file=sys.stderr)


class NeedsScene:
    """Operator mix-in: available when there is a scene with Viewfinder settings."""

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if context.scene is None or not hasattr(context.scene, "viewfinder"):
            cls.poll_message_set("No scene with Viewfinder settings")
            return False
        return True


class NeedsShots:
    """Operator mix-in: available when the scene has at least one shot."""

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if context.scene is None or not hasattr(context.scene, "viewfinder"):
            cls.poll_message_set("No scene with Viewfinder settings")
            return False
        # Polls may not write data, so plan from the markers (read-only) rather than
        # trust the stored list: a marker bound a moment ago by a script counts.
        if not shots_core.plan_for_scene(context.scene).shots:
            cls.poll_message_set("No shots: bind a camera to a timeline marker (Marker ▸ Bind Camera to Markers)")
            return False
        return True


class EngineJobModal:
    """The UI path of an operator that runs one engine job (Flamenco's pattern).

    The job runs on a worker thread that never touches bpy and posts ``Progress``,
    then the ``TakeOutcome`` or the exception, on a queue; a timer drains it on the
    main thread; Esc cancels within a denoising step and finished frames stay.
    Subclasses set ``status_label`` and define ``progress_text`` and ``job_finished``.
    """

    status_label = "Viewfinder"
    _timer: Any = None

    def start_engine_job(self, context: bpy.types.Context, job: Any, prefs: Any, first_status: str) -> set[str]:
        """Main thread: start the worker and the timer; returns RUNNING_MODAL."""
        self._messages: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        threading.Thread(target=self._run_engine_job, args=(job, prefs), name="viewfinder-engine-job",
                         daemon=True).start()
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.2, window=context.window)
        wm.modal_handler_add(self)
        self._status(context, first_status)
        return {"RUNNING_MODAL"}

    def _run_engine_job(self, job: Any, prefs: Any) -> None:
        """Worker thread: run the engine job and post progress and the outcome. Never touches bpy."""
        try:
            outcome = run_shot(job, engine_link.connect(prefs), on_progress=self._messages.put,
                               should_cancel=self._cancel.is_set)
            self._messages.put(outcome)
        except Exception as exc:
            self._messages.put(exc)

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if event.type == "ESC" and event.value == "PRESS":
            self._cancel.set()
            self._status(context, "cancelling…")
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        while True:
            try:
                message = self._messages.get_nowait()
            except queue.Empty:
                return {"RUNNING_MODAL"}
            if isinstance(message, Progress):
                self._status(context, self.progress_text(message))
                continue
            self._end(context)
            return self.job_finished(context, message)

    def progress_text(self, progress: Any) -> str:
        return f"frame {progress.frames_done} of {progress.frames_total}"

    def job_finished(self, context: bpy.types.Context, message: Any) -> set[str]:
        """Main thread: the TakeOutcome, or the exception the worker met."""
        raise NotImplementedError

    def _status(self, context: bpy.types.Context, text: str) -> None:
        if context.workspace is not None:
            context.workspace.status_text_set(f"{self.status_label}: {text} — Esc to cancel")

    def _end(self, context: bpy.types.Context) -> None:
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        if context.workspace is not None:
            context.workspace.status_text_set(None)

    def cancel(self, context: bpy.types.Context) -> None:
        self._cancel.set()
        self._end(context)
