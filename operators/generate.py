"""`viewfinder.generate`: shots → control maps → engine → takes on the VSE.

One shot loop, the state machine in core/generate/run.py: `execute` (background mode,
scripts, render farms: timers never fire there) calls its `tick()` in a loop; `invoke` +
`modal` call it from a timer, a few milliseconds' worth of ticks per timer event, so the
UI stays responsive while control maps render one frame a tick. Esc cancels at the next
tick and keeps every finished take; no strip is placed for an unfinished one.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import bpy
from bpy.props import StringProperty

from ..core.generate.run import DONE, IDLE, WORK, GenerationRun
from ..core.generate.shot import POLL_INTERVAL_S
from ..preferences import get_prefs
from .common import NeedsShots, project_of, report, resolve_shots

log = logging.getLogger(__name__)

# Ticks a timer event may run after the first, within this many seconds: cheap steps
# (uploads, polls) go quickly, and a frame's render still hands the UI back at once.
TICK_BUDGET_S = 0.02
TIMER_S = 0.05


class VIEWFINDER_OT_generate(NeedsShots, bpy.types.Operator):
    """Generate takes for a shot (or all shots) and place them on the Sequencer"""

    bl_idname = "viewfinder.generate"
    bl_label = "Generate"
    # No UNDO: the take files stay on disk whatever undo does; the strip is
    # ordinary data the user can undo after the fact.
    bl_options = {"REGISTER"}

    shot: StringProperty(name="Shot", description="Shot name; empty: all shots")

    _timer: Any = None
    _run: GenerationRun | None = None
    _quiet_until = 0.0

    def _begin(self, context: bpy.types.Context, *, background: bool) -> GenerationRun | None:
        shots, error = resolve_shots(context.scene, self.shot)
        if error:
            report(self, "ERROR", error)
            return None
        project = project_of(context)
        if project.temporary:
            report(self, "WARNING", f"Unsaved file: frames go to {project.describe()}")
        return GenerationRun([s.name for s in shots], project, get_prefs(context), hold_settings=background,
                             background=background)

    def _handle(self, run: GenerationRun) -> None:
        """The one message handler: what the run has to say, reported (both paths)."""
        reports, run.reports = run.reports, []
        for level, text in reports:
            report(self, level, text)

    # -- blocking path ---------------------------------------------------

    def execute(self, context: bpy.types.Context) -> set[str]:
        run = self._begin(context, background=True)
        if run is None:
            return {"CANCELLED"}
        try:
            while (state := run.tick(context.scene)) != DONE:
                self._handle(run)
                if state == IDLE:
                    time.sleep(POLL_INTERVAL_S)
        finally:
            if not run.done:  # an exception (or KeyboardInterrupt): settings back, no half folder
                run.abort(context.scene)
            self._handle(run)
        return {"FINISHED"} if run.failures < len(run.shots) else {"CANCELLED"}

    # -- modal path ------------------------------------------------------

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if bpy.app.background:
            return self.execute(context)
        self._run = self._begin(context, background=False)
        if self._run is None:
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_S, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 100)
        self._status(context, self._run.status())
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        run = self._run
        assert run is not None
        if event.type == "ESC" and event.value == "PRESS":
            run.cancel()
            self._status(context, "cancelling…")
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        now = time.perf_counter()
        if now < self._quiet_until and not run.cancelled:
            return {"RUNNING_MODAL"}  # the engine had no news: ask again after the poll interval
        deadline = now + TICK_BUDGET_S
        while True:
            state = run.tick(context.scene)
            self._handle(run)
            if state != WORK or time.perf_counter() >= deadline:
                break
        self._quiet_until = time.perf_counter() + POLL_INTERVAL_S if state == IDLE else 0.0
        if state == DONE:
            return self._finish(context)
        self._status(context, "cancelling…" if run.cancelled else run.status())
        context.window_manager.progress_update(int(100 * run.fraction()))
        return {"RUNNING_MODAL"}

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
        return {"FINISHED"}

    def cancel(self, context: bpy.types.Context) -> None:
        # Blender is closing the operator (file load, quit): stop the run where it is.
        if self._run is not None and not self._run.done:
            try:
                self._run.abort(context.scene)
            except Exception:  # the scene may already be gone
                log.debug("abort on close failed", exc_info=True)
        self._finish(context)


classes = (VIEWFINDER_OT_generate,)
register, unregister = bpy.utils.register_classes_factory(classes)
