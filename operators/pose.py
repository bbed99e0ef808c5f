"""Per-armature pose mapping: mark a person, override which bone stands for a keypoint."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, StringProperty

from ..core.conditioning.rigs import BODY_KEYPOINTS, HAND_KEYPOINTS


def _keypoint_items(_self: object, _context: object) -> list[tuple[str, str, str]]:
    names = list(BODY_KEYPOINTS) + [f"{side}_hand.{k}" for side in ("left", "right") for k in HAND_KEYPOINTS]
    return [(n, n.replace("_", " ").title(), f"Keypoint '{n}'") for n in names]


class ArmaturePoll:
    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        obj = context.active_object
        if obj is None or obj.type != "ARMATURE":
            cls.poll_message_set("Select an armature")
            return False
        return True


class VIEWFINDER_OT_add_pose_override(ArmaturePoll, bpy.types.Operator):
    """Choose the bone that stands for a keypoint on this armature (overrides the automatic mapping)"""

    bl_idname = "viewfinder.add_pose_override"
    bl_label = "Add Keypoint Override"
    bl_options = {"REGISTER", "UNDO"}
    bl_property = "keypoint"

    keypoint: EnumProperty(name="Keypoint", items=_keypoint_items)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        context.window_manager.invoke_search_popup(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        bones = context.active_object.viewfinder_pose.bones
        item = bones.get(self.keypoint) or bones.add()
        item.name = self.keypoint
        return {"FINISHED"}


class VIEWFINDER_OT_remove_pose_override(ArmaturePoll, bpy.types.Operator):
    """Go back to the automatic mapping for this keypoint"""

    bl_idname = "viewfinder.remove_pose_override"
    bl_label = "Remove Keypoint Override"
    bl_options = {"REGISTER", "UNDO"}

    keypoint: StringProperty(name="Keypoint")

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if self.keypoint:
            return self.execute(context)
        return context.window_manager.invoke_props_dialog(self)  # from F3: ask which one

    def draw(self, context: bpy.types.Context) -> None:
        self.layout.prop_search(self, "keypoint", context.active_object.viewfinder_pose, "bones")

    def execute(self, context: bpy.types.Context) -> set[str]:
        bones = context.active_object.viewfinder_pose.bones
        index = bones.find(self.keypoint)
        if index < 0:
            self.report({"ERROR"}, f"No override for keypoint '{self.keypoint}'")
            return {"CANCELLED"}
        bones.remove(index)
        return {"FINISHED"}


classes = (VIEWFINDER_OT_add_pose_override, VIEWFINDER_OT_remove_pose_override)
register, unregister = bpy.utils.register_classes_factory(classes)
