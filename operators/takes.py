"""Operators on take strips in the Sequencer: use this take, regenerate, open the folder, final from this draft."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import bpy
from bpy.props import BoolProperty

from ..core.client import link as engine_link
from ..core.compat import active_strip
from ..core.generate.shot import log_progress, run_shot, shot_message, summary
from ..core.generate.shot_job import place_outcome
from ..core.jobs.drafts import collect_final_from_draft
from ..core.timeline import vse
from ..preferences import get_prefs
from .common import EngineJobModal, project_of, report

T = TypeVar("T")


def selected_take(context: bpy.types.Context):
    editor = context.scene.sequence_editor if context.scene else None
    strip = active_strip(editor) if editor is not None else None
    if strip is None or strip.get(vse.KIND_KEY) != "take":
        return None
    return strip


def take_dir_of(strip) -> Path:
    return Path(bpy.path.abspath(strip.get(vse.TAKE_KEY, "")))


def connect_and_collect(op: Any, context: bpy.types.Context, collect: Callable[[Any, Any], T]) -> tuple[Any, T, Any] | None:
    """(engine client, ``collect(strip, prefs)``, prefs) for the selected take, or None after reporting why.

    The engine is reached first, so a job is never planned for an engine that is not there.
    """
    strip = selected_take(context)
    prefs = get_prefs(context)
    try:
        client = engine_link.connect(prefs)
        client.health()
        return client, collect(strip, prefs), prefs
    except Exception as exc:  # GenerationError, EngineError, the engine process start
        report(op, "ERROR", shot_message(strip.get(vse.SHOT_KEY, strip.name), exc))
        return None


class TakePoll:
    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if selected_take(context) is None:
            cls.poll_message_set("Select a Viewfinder take strip in the Sequencer")
            return False
        return True


class VIEWFINDER_OT_use_take(TakePoll, bpy.types.Operator):
    """Unmute the selected take and mute the shot's other takes"""

    bl_idname = "viewfinder.use_take"
    bl_label = "Use This Take"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        vse.use_take(context.scene, selected_take(context))
        return {"FINISHED"}


class VIEWFINDER_OT_regenerate_take(TakePoll, bpy.types.Operator):
    """Generate a new take of the selected take's shot with the shot's current settings"""

    bl_idname = "viewfinder.regenerate_take"
    bl_label = "Regenerate"
    bl_options = {"REGISTER"}

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return bpy.ops.viewfinder.generate("INVOKE_DEFAULT", shot=selected_take(context)[vse.SHOT_KEY])

    def execute(self, context: bpy.types.Context) -> set[str]:
        return bpy.ops.viewfinder.generate(shot=selected_take(context)[vse.SHOT_KEY])


class VIEWFINDER_OT_open_take_folder(TakePoll, bpy.types.Operator):
    """Open the selected take's folder in the file browser"""

    bl_idname = "viewfinder.open_take_folder"
    bl_label = "Open Folder"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        folder = take_dir_of(selected_take(context))
        if not folder.is_dir():
            report(self, "ERROR", f"Take folder {folder} is missing: was it moved or deleted?")
            return {"CANCELLED"}
        if bpy.app.background:
            print(folder)
            return {"FINISHED"}
        if sys.platform == "win32":
            os.startfile(folder)  # type: ignore[attr-defined]
        else:
            subprocess.Popen(["open" if sys.platform == "darwin" else "xdg-open", str(folder)])
        return {"FINISHED"}


class VIEWFINDER_OT_final_from_draft(TakePoll, EngineJobModal, bpy.types.Operator):
    """Generate the selected draft take again at the final tier: same seed, prompts and settings, full steps and size"""

    bl_idname = "viewfinder.final_from_draft"
    bl_label = "Final from This Draft"
    bl_options = {"REGISTER"}

    # Set by invoke: a click in the UI runs modal (Esc cancels); scripts calling execute block, as Generate does.
    interactive: BoolProperty(default=False, options={"HIDDEN", "SKIP_SAVE"})
    status_label = "Viewfinder Final from Draft"

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        self.interactive = not bpy.app.background
        return self.execute(context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        ready = connect_and_collect(self, context, lambda strip, prefs: collect_final_from_draft(
            context.scene, take_dir_of(strip), project_of(context), prefs))
        if ready is None:
            return {"CANCELLED"}
        client, job, prefs = ready
        for warning in job.warnings:
            report(self, "WARNING", warning)
        self._shot = job.shot
        if self.interactive and context.window is not None:
            return self.start_engine_job(context, job, prefs, "starting")
        # Scripts and background mode (timers never fire there): run to completion.
        try:
            outcome = run_shot(job, client, on_progress=log_progress)
        except Exception as exc:
            report(self, "ERROR", shot_message(job.shot, exc))
            return {"CANCELLED"}
        return self.job_finished(context, outcome)

    def job_finished(self, context: bpy.types.Context, message: Any) -> set[str]:
        if isinstance(message, Exception):
            report(self, "ERROR", shot_message(self._shot, message))
            return {"CANCELLED"}
        if message.error or message.cancelled:
            report(self, "ERROR", summary(message).replace("Generate again", "Final from This Draft again"))
            return {"CANCELLED"}
        place_outcome(context.scene, message)
        report(self, "INFO", f"{summary(message)}: final of the draft")
        return {"FINISHED"}


classes = (VIEWFINDER_OT_use_take, VIEWFINDER_OT_regenerate_take, VIEWFINDER_OT_open_take_folder,
           VIEWFINDER_OT_final_from_draft)
register, unregister = bpy.utils.register_classes_factory(classes)
