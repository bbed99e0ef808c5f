"""Helpers shared by operators: the project folder, shot lookup, reporting."""

from __future__ import annotations

import sys
from typing import Any

import bpy

from ..core import paths
from ..core import shots as shots_core
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
