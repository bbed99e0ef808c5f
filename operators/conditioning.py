"""Operators for control maps: render a shot's maps, and preview them on the VSE."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from ..core.conditioning import ConditioningError, render_shot
from ..core.conditioning.seg import write_previews
from ..core.generate.map_plan import render_options
from ..core.scene.resolution import scene_size
from ..core.timeline import vse
from ..core.timeline.paths import frame_name
from .common import NeedsScene, project_of, report, resolve_shots

log = logging.getLogger(__name__)



class VIEWFINDER_OT_render_conditioning(NeedsScene, bpy.types.Operator):
    """Render depth, pose, masks and motion (and the normal, line-art and seg maps a shot weights) for every frame of a shot from its camera (CPU, headless)"""

    bl_idname = "viewfinder.render_conditioning"
    bl_label = "Render Control Maps"
    # No UNDO: writes files, not Blender data (and restores every setting it touches).
    bl_options = {"REGISTER"}

    shot: StringProperty(name="Shot", description="Shot name; empty: all shots")
    force: BoolProperty(name="Force", description="Render even when the maps on disk are current")

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = context.scene
        shots, problem = resolve_shots(scene, self.shot)
        if problem:
            report(self, "ERROR", problem)
            return {"CANCELLED"}
        project = project_of(context)
        width, height = scene_size(scene)
        done: list[str] = []
        for shot in shots:
            if shot.problem:
                report(self, "WARNING", f"Skipped '{shot.name}': {shot.problem}")
                continue
            try:
                result = render_shot(
                    scene, shot, project.conditioning_dir(shot.name), width=width, height=height, force=self.force,
                    maps=render_options(scene, shot),
                )
            except ConditioningError as exc:
                report(self, "ERROR", str(exc))
                return {"CANCELLED"}
            for warning in result.warnings:
                report(self, "WARNING", warning)
            done.append(shot.name)
        if not done:
            report(self, "ERROR", "No shot could be rendered (see the warnings)")
            return {"CANCELLED"}
        report(self, "INFO", f"Control maps for {len(done)} shot(s) at {width}×{height} in {project.describe()}")
        return {"FINISHED"}


# Map kind -> (label, why it may be missing).
MAP_ITEMS = {
    "DEPTH": ("Depth", "render them first (Render Control Maps)"),
    "POSE": ("Pose", "nobody visible?"),
    "NORMAL": ("Normal", "raise the shot's Normal Weight above 0, then render"),
    "LINEART": ("Line Art", "raise the shot's Line Art Weight above 0, then render"),
    "SEG": ("Segmentation", "raise the shot's Segmentation Weight above 0, then render"),
}


def load_preview(scene: bpy.types.Scene, shot: Any, folder: Path, kind: str) -> list[Any]:
    """Put one kind of a shot's maps on the VSE, on a channel of their own above everything else.

    Segmentation maps hold class indices (near-black on screen): their preview colours are written
    beside the shot's folder first (seg.write_previews; preview only, never sent).
    """
    frames = [f for f in range(shot.frame_start, shot.frame_end + 1) if (folder / frame_name(f)).is_file()]
    if kind == "SEG":
        shown = folder.parent.parent / "seg-preview"
        write_previews(folder, shown, [frame_name(f) for f in frames])
        folder = shown
    return vse.add_control_strips(scene, shot_name=shot.name, kind=kind, directory=folder, frames=frames)


def _meta(conditioning: Path) -> dict[str, Any]:
    try:
        return json.loads((conditioning / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


class VIEWFINDER_OT_preview_conditioning(NeedsScene, bpy.types.Operator):
    """Show the active shot's control maps (depth, pose, normal, line art, segmentation, or all) on the sequencer, each on its own channel"""

    bl_idname = "viewfinder.preview_conditioning"
    bl_label = "Preview Control Maps"
    bl_options = {"REGISTER", "UNDO"}

    kind: EnumProperty(
        name="Map", default="DEPTH",
        items=[("DEPTH", "Depth", "Depth maps"), ("POSE", "Pose", "OpenPose drawings"),
               ("NORMAL", "Normal", "Normal maps (normalbae colours)"), ("LINEART", "Line Art", "Line maps"),
               ("SEG", "Segmentation", "Segmentation maps, in preview colours (the engine uses ADE20K's)"),
               ("ALL", "All", "Every map the shot has, each on its own channel")],
    )
    shot: StringProperty(name="Shot", description="Shot name; empty: the active shot")

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = context.scene
        settings = scene.viewfinder
        name = self.shot
        if not name:
            shots = list(settings.shots)
            if not shots:
                report(self, "ERROR", "No shots: bind a camera to a timeline marker")
                return {"CANCELLED"}
            name = shots[min(settings.active_shot_index, len(shots) - 1)].name
        shots, problem = resolve_shots(scene, name)
        if problem:
            report(self, "ERROR", problem)
            return {"CANCELLED"}
        shot = shots[0]
        conditioning = project_of(context).conditioning_dir(shot.name)
        if self.kind == "ALL":
            return self._show_all(scene, shot, conditioning)
        return self._show(scene, shot, conditioning, self.kind)

    def _show(self, scene: bpy.types.Scene, shot: Any, conditioning: Path, kind: str) -> set[str]:
        label, hint = MAP_ITEMS[kind]
        folder = conditioning / kind.lower()
        if kind == "POSE" and _meta(conditioning).get("people") == []:
            report(self, "ERROR", f"'{shot.name}' has no person (no armature mapped to OpenPose), so no pose maps")
            return {"CANCELLED"}
        if not folder.is_dir():
            report(self, "ERROR", f"No {label.lower()} maps for '{shot.name}' in {folder.parent}: {hint}")
            return {"CANCELLED"}
        strips = load_preview(scene, shot, folder, kind)
        if not strips:
            report(self, "WARNING", f"'{shot.name}' has no {label.lower()} maps ({hint})")
            return {"CANCELLED"}
        report(self, "INFO", f"{label} maps of '{shot.name}' on channel {strips[0].channel}")
        return {"FINISHED"}

    def _show_all(self, scene: bpy.types.Scene, shot: Any, conditioning: Path) -> set[str]:
        shown = []
        for kind in MAP_ITEMS:
            if (conditioning / kind.lower()).is_dir() and load_preview(scene, shot, conditioning / kind.lower(), kind):
                shown.append(MAP_ITEMS[kind][0])
        if not shown:
            report(self, "ERROR", f"No control maps for '{shot.name}' in {conditioning}: render them first "
                                  "(Render Control Maps)")
            return {"CANCELLED"}
        report(self, "INFO", f"Maps of '{shot.name}' on the sequencer: {', '.join(shown)}")
        return {"FINISHED"}


classes = (VIEWFINDER_OT_render_conditioning, VIEWFINDER_OT_preview_conditioning)
register, unregister = bpy.utils.register_classes_factory(classes)
