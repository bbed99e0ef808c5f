"""`viewfinder.finalize_take`: the selected (approved) take → a 2x/4x final take above it."""

from __future__ import annotations

import logging
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, StringProperty

from ..core.generate.shot import Progress, TakeOutcome, log_progress, run_shot, shot_message, summary
from ..core.jobs.finalize import DETAIL_STRENGTH, collect_finalize, place_final
from .common import EngineJobModal, project_of, report
from .takes import TakePoll, connect_and_collect, take_dir_of

log = logging.getLogger(__name__)


class VIEWFINDER_OT_finalize_take(TakePoll, EngineJobModal, bpy.types.Operator):
    """Make a final take of the selected take at 2x or 4x (up to the scene's output size): upscaled, detailed along the control maps, coherent over time"""

    bl_idname = "viewfinder.finalize_take"
    bl_label = "Finalize Take"
    bl_options = {"REGISTER"}

    factor: EnumProperty(name="Size", items=[("2", "2×", "Twice the take's size"), ("4", "4×", "Four times")],
                         default="2")
    upscaler: StringProperty(name="Upscaler", subtype="FILE_PATH",
                             description="A .safetensors super-resolution model (Real-ESRGAN, SwinIR, HAT, ...); "
                                         "empty: plain resizing before the detail pass")
    detail_strength: FloatProperty(name="Detail", default=DETAIL_STRENGTH, min=0.0, max=1.0,
                                   description="Strength of the detail pass guided by the control maps; 0: upscale only")

    # Set by invoke: a click in the UI runs modal (Esc cancels); scripts calling execute block, as Generate does.
    interactive: BoolProperty(default=False, options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        self.interactive = not bpy.app.background
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context: bpy.types.Context) -> set[str]:
        ready = connect_and_collect(self, context, lambda strip, prefs: collect_finalize(
            context.scene, take_dir_of(strip), project_of(context), prefs, factor=int(self.factor),
            upscaler=self.upscaler, detail_strength=self.detail_strength))
        if ready is None:
            return {"CANCELLED"}
        client, plan, prefs = ready
        for note in plan.notes:
            report(self, "WARNING", note)
        if self.interactive and context.window is not None:
            return self._start_modal(context, plan, prefs)
        # Scripts and background mode (farms: timers never fire there): run to completion.
        try:
            context.window_manager.progress_begin(0, 100)
            outcome = run_shot(plan.job, client, on_progress=log_progress)
            place_final(context.scene, outcome)
        except Exception as exc:
            report(self, "ERROR", shot_message(plan.job.shot, exc))
            return {"CANCELLED"}
        finally:
            context.window_manager.progress_end()
        return self._report(plan, outcome)

    def _report(self, plan: Any, outcome: TakeOutcome) -> set[str]:
        if outcome.error or outcome.cancelled:
            report(self, "ERROR", summary(outcome).replace("Generate again", "Finalize again"))
            return {"CANCELLED"}
        report(self, "INFO", f"{summary(outcome)}: final at {plan.width}×{plan.height}")
        return {"FINISHED"}

    # -- UI path: the engine job on a worker (common.EngineJobModal), Esc cancels ----

    status_label = "Viewfinder Finalize Take"

    def _start_modal(self, context: bpy.types.Context, plan: Any, prefs: Any) -> set[str]:
        self._plan = plan
        return self.start_engine_job(context, plan.job, prefs, "starting")

    def progress_text(self, progress: Progress) -> str:
        text = f"frame {progress.frames_done} of {progress.frames_total}"
        return text + (f", step {progress.step}/{progress.steps}" if progress.steps else "")

    def job_finished(self, context: bpy.types.Context, message: Any) -> set[str]:
        if isinstance(message, Exception):
            report(self, "ERROR", shot_message(self._plan.job.shot, message))
            return {"CANCELLED"}
        try:
            place_final(context.scene, message)
        except Exception as exc:
            report(self, "ERROR", shot_message(self._plan.job.shot, exc))
            return {"CANCELLED"}
        return self._report(self._plan, message)

classes = (VIEWFINDER_OT_finalize_take,)
register, unregister = bpy.utils.register_classes_factory(classes)
