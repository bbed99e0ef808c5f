"""`viewfinder.finalize_take`: the selected (approved) take → a 2x/4x final take above it."""

from __future__ import annotations

import logging

import bpy
from bpy.props import EnumProperty, FloatProperty, StringProperty

from ..core import engine_link
from ..core.finalize import DETAIL_STRENGTH, collect_finalize, place_final
from ..core.generate import run_shot
from ..preferences import get_prefs
from .common import project_of, report
from .generate import _log_progress, _message, _summary
from .takes import TakePoll, selected_take, take_dir_of

log = logging.getLogger(__name__)


class VIEWFINDER_OT_finalize_take(TakePoll, bpy.types.Operator):
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

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context: bpy.types.Context) -> set[str]:
        strip = selected_take(context)
        prefs = get_prefs(context)
        try:
            client = engine_link.connect(prefs)
            client.health()
            plan = collect_finalize(context.scene, take_dir_of(strip), project_of(context), prefs,
                                    factor=int(self.factor), upscaler=self.upscaler,
                                    detail_strength=self.detail_strength)
        except Exception as exc:  # GenerationError, EngineError, the engine process start
            report(self, "ERROR", _message(strip.get("viewfinder_shot", strip.name), exc))
            return {"CANCELLED"}
        for note in plan.notes:
            report(self, "WARNING", note)
        try:
            context.window_manager.progress_begin(0, 100)
            outcome = run_shot(plan.job, client, on_progress=_log_progress)
            place_final(context.scene, outcome)
        except Exception as exc:
            report(self, "ERROR", _message(plan.job.shot, exc))
            return {"CANCELLED"}
        finally:
            context.window_manager.progress_end()
        if outcome.error or outcome.cancelled:
            report(self, "ERROR", _summary(outcome).replace("Generate again", "Finalize again"))
            return {"CANCELLED"}
        report(self, "INFO", f"{_summary(outcome)}: final at {plan.width}×{plan.height}")
        return {"FINISHED"}


classes = (VIEWFINDER_OT_finalize_take,)
register, unregister = bpy.utils.register_classes_factory(classes)
