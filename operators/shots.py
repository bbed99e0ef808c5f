"""Operators over shots: refresh the list, start a shot from a camera, jump to a shot."""

from __future__ import annotations

import bpy
from bpy.props import StringProperty

from ..core.scene import shots as shots_core
from .common import NeedsScene, NeedsShots, report


class VIEWFINDER_OT_sync_shots(NeedsScene, bpy.types.Operator):
    """Read the shots again from the camera-bound timeline markers"""

    bl_idname = "viewfinder.sync_shots"
    bl_label = "Refresh Shots"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = context.scene
        shots_core.sync_shots(scene)
        problems = shots_core.scene_problems(scene)
        for problem in problems:
            report(self, "WARNING", problem)
        count = len(scene.viewfinder.shot_list)
        self.report({"INFO"}, f"{count} shot{'s' if count != 1 else ''}")
        return {"FINISHED"}


class VIEWFINDER_OT_add_shot(bpy.types.Operator):
    """Start a shot at the current frame with the active camera (adds a marker bound to it)"""

    bl_idname = "viewfinder.add_shot"
    bl_label = "Add Shot from Camera"
    bl_options = {"REGISTER", "UNDO"}

    name: StringProperty(name="Name", description="Shot (marker) name; empty: Shot N")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        obj = context.active_object
        if obj is None or obj.type != "CAMERA":
            cls.poll_message_set("Select a camera: a shot starts with the camera it is seen through")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = context.scene
        frame = scene.frame_current
        existing = [m.name for m in scene.timeline_markers]
        name = self.name or next(f"Shot {i}" for i in range(1, len(existing) + 2) if f"Shot {i}" not in existing)
        marker = next((m for m in scene.timeline_markers if m.frame == frame), None)
        if marker is None:
            marker = scene.timeline_markers.new(name, frame=frame)
        elif self.name:
            marker.name = self.name
        marker.camera = context.active_object
        shots_core.sync_shots(scene)
        self.report({"INFO"}, f"Shot '{marker.name}' starts at frame {frame} with '{marker.camera.name}'")
        return {"FINISHED"}


class VIEWFINDER_OT_jump_to_shot(NeedsShots, bpy.types.Operator):
    """Go to the shot's first frame and look through its camera"""

    bl_idname = "viewfinder.jump_to_shot"
    bl_label = "Go to Shot"
    bl_options = {"REGISTER", "UNDO"}

    shot: StringProperty(name="Shot", description="Shot name; empty: the active shot")

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.viewfinder
        shots = settings.shots
        if self.shot:
            shot = shots.get(self.shot)
            if shot is None:
                report(self, "ERROR", f"No shot named '{self.shot}'")
                return {"CANCELLED"}
        else:
            shot = shots[min(settings.active_shot_index, len(shots) - 1)]
        context.scene.frame_set(shot.frame_start)
        if shot.camera is not None:
            context.scene.camera = shot.camera
        return {"FINISHED"}


classes = (VIEWFINDER_OT_sync_shots, VIEWFINDER_OT_add_shot, VIEWFINDER_OT_jump_to_shot)
register, unregister = bpy.utils.register_classes_factory(classes)
