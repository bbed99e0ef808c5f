"""Helpers shared by operators: the project folder, shot lookup, reporting, the modal loop of a worker."""

from __future__ import annotations

import sys
from typing import Any

import bpy

from ..core.generate.shot import engine_job_task
from ..core.scene import shots as shots_core
from ..core.timeline import paths
from ..core.worker import MsgDone, MsgException, Worker
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


class WorkerModal:
    """The UI end of a `core.worker.Worker` (Flamenco's modal operator): a timer drains the
    worker's typed messages on the main thread, Esc sets its cancel event.

    `handle_messages` is the one message handler: `modal` calls it on each timer event, and
    `run_worker_here` (execute, background mode) after running the task on this thread.
    Subclasses set ``status_label`` and define ``worker_done`` and ``worker_failed``.
    """

    status_label = "Viewfinder"
    timer_s = 0.2
    _timer: Any = None
    _worker: Worker | None = None
    _progress_bar = False

    def start_worker(self, context: bpy.types.Context, worker: Worker, first_status: str, *,
                     progress_bar: bool = False) -> set[str]:
        """Main thread: start the worker and the timer; returns RUNNING_MODAL at once."""
        self._worker = worker.start()
        wm = context.window_manager
        self._timer = wm.event_timer_add(self.timer_s, window=context.window)
        wm.modal_handler_add(self)
        self._progress_bar = progress_bar
        if progress_bar:
            wm.progress_begin(0, 100)
        self._status(context, first_status)
        return {"RUNNING_MODAL"}

    def runs_here(self) -> bool:
        """Background mode (no timers fire): run the task on this thread."""
        return bool(bpy.app.background)

    def run_worker_here(self, context: bpy.types.Context, worker: Worker) -> set[str]:
        """Background mode: the task on this thread, then the same message handler."""
        self._worker = worker.run_here()
        return self.handle_messages(context, worker.messages()) or {"CANCELLED"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        assert self._worker is not None
        if event.type == "ESC" and event.value == "PRESS":
            self._worker.cancel()
            self._status(context, "cancelling…")
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        return self.handle_messages(context, self._worker.messages()) or {"RUNNING_MODAL"}

    def handle_messages(self, context: bpy.types.Context, messages: list[Any]) -> set[str] | None:
        """Main thread: show progress; on the last message end the loop and return what the operator returns."""
        for message in messages:
            if isinstance(message, MsgDone):
                self._end(context)
                return self.worker_done(context, message.result)
            if isinstance(message, MsgException):
                self._end(context)
                return self.worker_failed(context, message.error)
            self._status(context, self.progress_text(message))
            fraction = getattr(message, "fraction", None)
            if self._progress_bar and fraction is not None and context.window_manager is not None:
                context.window_manager.progress_update(int(100 * fraction))
        return None

    def progress_text(self, progress: Any) -> str:
        return str(getattr(progress, "text", progress))

    def worker_done(self, context: bpy.types.Context, result: Any) -> set[str]:
        raise NotImplementedError

    def worker_failed(self, context: bpy.types.Context, error: BaseException) -> set[str]:
        raise NotImplementedError

    def _status(self, context: bpy.types.Context, text: str) -> None:
        if context.workspace is not None:
            context.workspace.status_text_set(f"{self.status_label}: {text} — Esc to cancel")

    def _end(self, context: bpy.types.Context) -> None:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        if self._progress_bar and wm is not None:
            wm.progress_end()
            self._progress_bar = False
        if context.workspace is not None:
            context.workspace.status_text_set(None)

    def cancel(self, context: bpy.types.Context) -> None:
        # Blender is closing the operator (file load, quit): stop the worker too.
        if self._worker is not None:
            self._worker.cancel()
        self._end(context)


class EngineJobModal(WorkerModal):
    """The UI path of an operator that runs one engine job on a `Worker` (`engine_job_task`).

    The worker posts ``Progress``, then the ``TakeOutcome`` or the exception; Esc cancels
    within a denoising step and finished frames stay. Subclasses set ``status_label`` and
    define ``progress_text`` and ``job_finished``.
    """

    def start_engine_job(self, context: bpy.types.Context, job: Any, prefs: Any, first_status: str) -> set[str]:
        """Main thread: start the worker and the timer; returns RUNNING_MODAL."""
        return self.start_worker(context, Worker(engine_job_task, job, prefs, name="viewfinder-engine-job"),
                                 first_status)

    def progress_text(self, progress: Any) -> str:
        return f"frame {progress.frames_done} of {progress.frames_total}"

    def worker_done(self, context: bpy.types.Context, result: Any) -> set[str]:
        return self.job_finished(context, result)

    def worker_failed(self, context: bpy.types.Context, error: BaseException) -> set[str]:
        return self.job_finished(context, error)

    def job_finished(self, context: bpy.types.Context, message: Any) -> set[str]:
        """Main thread: the TakeOutcome, or the exception the worker met."""
        raise NotImplementedError
