"""Operators on take strips in the Sequencer: use this take, regenerate, open the folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bpy

from ..core import vse
from ..core.compat import active_strip
from ..core.takes import read_take
from .common import report


def selected_take(context: bpy.types.Context):
    editor = context.scene.sequence_editor if context.scene else None
    strip = active_strip(editor) if editor is not None else None
    if strip is None or strip.get(vse.KIND_KEY) != "take":
        return None
    return strip


def take_dir_of(strip) -> Path:
    return Path(bpy.path.abspath(strip.get(vse.TAKE_KEY, "")))


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


def draw_take(layout: bpy.types.UILayout, strip) -> None:
    """The take's metadata and actions, for the Sequencer sidebar."""
    info = read_take(take_dir_of(strip))
    layout.label(text=strip.name, icon="SEQUENCE")
    if info is None:
        layout.label(text="take.json is missing or unreadable", icon="ERROR")
    else:
        col = layout.column(align=True)
        col.label(text=f"Prompt: {info.prompt or '—'}")
        if info.style_prompt:
            col.label(text=f"Style: {info.style_prompt}")
        if info.negative_prompt:
            col.label(text=f"Negative: {info.negative_prompt}")
        col.label(text=f"Seed: {info.seed}")
        if info.characters:
            col.label(text=f"Characters: {', '.join(c['name'] for c in info.characters)}", icon="COMMUNITY")
        col.label(text=f"Model: {info.models.get('base', '?')}")
        col.label(text=f"Made: {info.created}")
    row = layout.row(align=True)
    row.operator("viewfinder.use_take", icon="CHECKMARK")
    row.operator("viewfinder.regenerate_take", icon="FILE_REFRESH")
    layout.operator("viewfinder.open_take_folder", icon="FILE_FOLDER")
    layout.operator("viewfinder.finalize_take", icon="ZOOM_IN")


classes = (VIEWFINDER_OT_use_take, VIEWFINDER_OT_regenerate_take, VIEWFINDER_OT_open_take_folder)
register, unregister = bpy.utils.register_classes_factory(classes)
