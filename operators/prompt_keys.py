"""Operators for prompt travel: add and remove prompt keys, import a Deforum schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from ..core.scene import deforum
from ..core.scene import prompt_keys as keys_core
from .common import NeedsShots, report

TARGET_ITEMS = [
    ("flow_strength", "Flow Strength", "Deforum strength (kept share): keys FLOW strength as 1 - value"),
    ("guidance_scale", "Guidance", "Deforum cfg_scale: keys the shot's own guidance scale"),
    ("seed", "Seed", "Deforum seed schedule: keys the seed (held between keys)"),
    ("depth_weight", "Depth Weight", "ControlNet depth weight"),
    ("pose_weight", "Pose Weight", "ControlNet OpenPose weight"),
    ("control_start", "Control Start", "ControlNet guidance start"),
    ("control_end", "Control End", "ControlNet guidance end"),
    ("normal_weight", "Normal Weight", "ControlNet normal weight"),
    ("lineart_weight", "Line Art Weight", "ControlNet line art (lineart, canny, MLSD) weight"),
    ("seg_weight", "Segmentation Weight", "ControlNet segmentation weight"),
    ("normal_start", "Normal Start", "Normal ControlNet guidance start (the map's own range)"),
    ("normal_end", "Normal End", "Normal ControlNet guidance end (the map's own range)"),
    ("lineart_start", "Line Art Start", "Line-art ControlNet guidance start (the map's own range)"),
    ("lineart_end", "Line Art End", "Line-art ControlNet guidance end (the map's own range)"),
    ("seg_start", "Segmentation Start", "Segmentation ControlNet guidance start (the map's own range)"),
    ("seg_end", "Segmentation End", "Segmentation ControlNet guidance end (the map's own range)"),
]


def _active_shot(context: bpy.types.Context, name: str) -> tuple[Any, str]:
    settings = context.scene.viewfinder
    shots = settings.shots
    if name:
        shot = shots.get(name)
        return (shot, "") if shot is not None else (None, f"No shot named '{name}'")
    if not len(shots):
        return None, "No shots: bind a camera to a timeline marker (Marker ▸ Bind Camera to Markers)"
    return shots[min(settings.active_shot_index, len(shots) - 1)], ""


class VIEWFINDER_OT_add_prompt_key(NeedsShots, bpy.types.Operator):
    """Add a prompt to the active shot, its weight keyed 0 on the frame before and 1 on the current frame"""

    bl_idname = "viewfinder.add_prompt_key"
    bl_label = "Add Prompt Key"
    bl_options = {"REGISTER", "UNDO"}

    prompt: StringProperty(name="Prompt", description="What the shot shows from the current frame on")
    shot: StringProperty(name="Shot", description="Shot name; empty: the active shot")

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return context.window_manager.invoke_props_dialog(self, width=420)

    def execute(self, context: bpy.types.Context) -> set[str]:
        shot, error = _active_shot(context, self.shot)
        if error:
            report(self, "ERROR", error)
            return {"CANCELLED"}
        if not self.prompt.strip():
            report(self, "ERROR", "Type a prompt: an empty prompt key would be left out of every frame")
            return {"CANCELLED"}
        frame = context.scene.frame_current
        keys_core.add_prompt_key(context.scene, shot, self.prompt.strip(), frame)
        if not shot.frame_start <= frame <= shot.frame_end:
            report(self, "WARNING", f"Frame {frame} is outside shot '{shot.name}' ({shot.frame_start}–"
                                    f"{shot.frame_end}): the key only shows where its curve reaches the shot")
        return {"FINISHED"}


class VIEWFINDER_OT_remove_prompt_key(NeedsShots, bpy.types.Operator):
    """Remove the active prompt key and its animation"""

    bl_idname = "viewfinder.remove_prompt_key"
    bl_label = "Remove Prompt Key"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(name="Index", default=-1, description="Key to remove; -1: the active one")
    shot: StringProperty(name="Shot", description="Shot name; empty: the active shot")

    def execute(self, context: bpy.types.Context) -> set[str]:
        shot, error = _active_shot(context, self.shot)
        if error:
            report(self, "ERROR", error)
            return {"CANCELLED"}
        index = shot.active_prompt_key_index if self.index < 0 else self.index
        if not 0 <= index < len(shot.prompt_keys):
            report(self, "ERROR", f"Shot '{shot.name}' has no prompt key {index + 1}")
            return {"CANCELLED"}
        keys_core.remove_prompt_key(context.scene, shot, index)
        return {"FINISHED"}


class VIEWFINDER_OT_import_deforum(NeedsShots, bpy.types.Operator):
    """Import a Deforum schedule (settings file, or pasted prompts / values) as prompt keys and F-curves"""

    bl_idname = "viewfinder.import_deforum"
    bl_label = "Import Deforum Schedule"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="File", subtype="FILE_PATH", description="A Deforum settings file (.txt/.json)")
    filter_glob: StringProperty(default="*.txt;*.json", options={"HIDDEN"})
    text: StringProperty(name="Schedule", description="Pasted schedule: '0: a street, 48: fire' as JSON, "
                                                      "or '0:(0.65), 48:(0.4)' for Target; used when no file is set")
    text_name: StringProperty(name="Text", description="A text in the Text Editor holding the schedule")
    target: EnumProperty(name="Target", items=TARGET_ITEMS, default="flow_strength",
                         description="What a pasted value schedule keys")
    switch: BoolProperty(name="Cut Between Prompts", default=False,
                         description="Hold each prompt until the next one (constant) instead of cross-fading")
    shot: StringProperty(name="Shot", description="Shot name; empty: the active shot")

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        shot, error = _active_shot(context, self.shot)
        if error:
            report(self, "ERROR", error)
            return {"CANCELLED"}
        # 1. The schedule's text: a file, a Text datablock, or the pasted string.
        source, text = self._source()
        if text is None:
            report(self, "ERROR", source)
            return {"CANCELLED"}
        # 2. Parse; every malformed line is named, the rest imports.
        schedule = deforum.parse(text, self.target)
        for problem in schedule.problems:
            report(self, "WARNING", f"{source}: {problem}")
        for note in schedule.notes:
            report(self, "INFO", f"{source}: {note}")
        if schedule.empty:
            report(self, "ERROR", f"{source}: nothing to import (no 'frame: prompt' lines or 'frame:(value)' "
                                  "schedules)")
            return {"CANCELLED"}
        result = keys_core.import_schedule(context.scene, shot, schedule, switch=self.switch)
        if result.beyond_end:
            report(self, "WARNING", f"Keys on frames {result.beyond_end[:5]} are after shot '{shot.name}' ends "
                                    f"({shot.frame_end}): Deforum frame 0 is the shot's first frame")
        curves = ", ".join(result.curves) or "no values"
        report(self, "INFO", f"Shot '{shot.name}': {result.prompt_keys} prompt keys and {curves} keyed from {source}")
        return {"FINISHED"}

    def _source(self) -> tuple[str, str | None]:
        """(where the schedule came from, its text), or (error message, None)."""
        path = Path(bpy.path.abspath(self.filepath)) if self.filepath else None
        # The file browser passes its folder when no file was picked: then the text or pasted schedule.
        if path is not None and not path.is_dir():
            try:
                return path.name, path.read_text("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                return f"Cannot read the Deforum file {path}: {exc}", None
        if self.text_name:
            block = bpy.data.texts.get(self.text_name)
            if block is None:
                return f"No text named '{self.text_name}' in the Text Editor", None
            return f"text '{self.text_name}'", block.as_string()
        if self.text.strip():
            return "the pasted schedule", self.text
        return "Choose a Deforum settings file, a text in the Text Editor, or paste a schedule", None


classes = (VIEWFINDER_OT_add_prompt_key, VIEWFINDER_OT_remove_prompt_key, VIEWFINDER_OT_import_deforum)
register, unregister = bpy.utils.register_classes_factory(classes)
