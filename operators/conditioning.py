"""Operators for control maps: render a shot's maps, and preview them on the VSE."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from ..core.conditioning import ConditioningError, render_shot
from ..core.scene.resolution import scene_size
from ..core.timeline import vse
from ..core.timeline.paths import frame_name
from .common import NeedsScene, project_of, report, resolve_shots

log = logging.getLogger(__name__)



class VIEWFINDER_OT_render_conditioning(NeedsScene, bpy.types.Operator):
    """Render depth, pose, masks and motion for every frame of a shot from its camera (CPU, headless)"""

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
                    scene, shot, project.conditioning_dir(shot.name), width=width, height=height, force=self.force
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


def load_preview(scene: bpy.types.Scene, shot: Any, folder: Path, kind: str) -> list[Any]:
    """Put a shot's depth or pose maps on the VSE, on a channel of their own above everything else."""
    frames = [f for f in range(shot.frame_start, shot.frame_end + 1) if (folder / frame_name(f)).is_file()]
    return vse.add_control_strips(scene, shot_name=shot.name, kind=kind, directory=folder, frames=frames)


def _meta(conditioning: Path) -> dict[str, Any]:
    try:
        return json.loads((conditioning / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


class VIEWFINDER_OT_preview_conditioning(NeedsScene, bpy.types.Operator):
    """Show the active shot's depth or pose maps on the sequencer, on their own channel"""

    bl_idname = "viewfinder.preview_conditioning"
    bl_label = "Preview Control Maps"
    bl_options = {"REGISTER", "UNDO"}

    kind: EnumProperty(
        name="Map", items=[("DEPTH", "Depth", "Depth maps"), ("POSE", "Pose", "OpenPose drawings")], default="DEPTH"
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
        folder = conditioning / self.kind.lower()
        if self.kind == "POSE" and _meta(conditioning).get("people") == []:
            report(self, "ERROR", f"'{shot.name}' has no person (no armature mapped to OpenPose), so no pose maps")
            return {"CANCELLED"}
        if not folder.is_dir():
            report(self, "ERROR", f"No {self.kind.lower()} maps for '{shot.name}' in {folder.parent}: "
                   "render them first (Render Control Maps)")
            return {"CANCELLED"}
        strips = load_preview(scene, shot, folder, self.kind)
        if not strips:
            report(self, "WARNING", f"'{shot.name}' has no {self.kind.lower()} maps (nobody visible?)")
            return {"CANCELLED"}
        report(self, "INFO", f"{self.kind.title()} maps of '{shot.name}' on channel {strips[0].channel}")
        return {"FINISHED"}


classes = (VIEWFINDER_OT_render_conditioning, VIEWFINDER_OT_preview_conditioning)
register, unregister = bpy.utils.register_classes_factory(classes)
