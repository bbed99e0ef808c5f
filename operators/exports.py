"""Storyboard and animatic exports."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import StringProperty

from ..core.timeline.exports import ExportError, export_animatic, export_storyboard, unfinalized_shots
from .common import NeedsShots, project_of, report


class VIEWFINDER_OT_export_storyboard(NeedsShots, bpy.types.Operator):
    """Write a contact sheet: one row per shot with its first, middle and last frame, lens, duration and prompt"""

    bl_idname = "viewfinder.export_storyboard"
    bl_label = "Export Storyboard"
    bl_options = {"REGISTER"}

    filepath: StringProperty(name="File", subtype="FILE_PATH", description="PNG to write; empty: storyboard.png in the project folder")

    def execute(self, context: bpy.types.Context) -> set[str]:
        project = project_of(context)
        output = Path(bpy.path.abspath(self.filepath)) if self.filepath else project.root / "storyboard.png"
        try:
            path = export_storyboard(context.scene, project, output)
        except (ExportError, OSError) as exc:
            report(self, "ERROR", str(exc))
            return {"CANCELLED"}
        report(self, "INFO", f"Storyboard written to {path}")
        return {"FINISHED"}


class VIEWFINDER_OT_export_animatic(bpy.types.Operator):
    """Render the Sequencer edit with its sound to an MP4 (your render settings are left as they were)"""

    bl_idname = "viewfinder.export_animatic"
    bl_label = "Export Animatic"
    bl_options = {"REGISTER"}

    filepath: StringProperty(name="File", subtype="FILE_PATH", description="MP4 to write; empty: animatic.mp4 in the project folder")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if context.scene is None or context.scene.sequence_editor is None:
            cls.poll_message_set("The Sequencer is empty: generate takes first")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        output = Path(bpy.path.abspath(self.filepath)) if self.filepath else project_of(context).root / "animatic.mp4"
        try:
            path = export_animatic(context.scene, output)
        except (ExportError, OSError, RuntimeError) as exc:
            report(self, "ERROR", str(exc))
            return {"CANCELLED"}
        report(self, "INFO", f"Animatic written to {path}")
        shots = unfinalized_shots(context.scene)
        if shots:
            report(self, "WARNING", f"Not finalized (takes at generation size in the animatic): {', '.join(shots)}; "
                                    "select a take and use Finalize Take for delivery size")
        return {"FINISHED"}


classes = (VIEWFINDER_OT_export_storyboard, VIEWFINDER_OT_export_animatic)
register, unregister = bpy.utils.register_classes_factory(classes)
