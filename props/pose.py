"""Per-armature pose mapping (`object.viewfinder_pose`): is it a person, and which bone is which keypoint.

Automatic maps cover the human meta-rig / Rigify and Mixamo
(core/conditioning/rigs.py); an entry here overrides one keypoint. Keypoint
names are `rigs.BODY_KEYPOINTS` ("left_wrist") and, for hands,
"left_hand.index_2" / "right_hand.thumb_4" (`rigs.HAND_KEYPOINTS`).
"""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, CollectionProperty, PointerProperty, StringProperty


class ViewfinderPoseBone(bpy.types.PropertyGroup):
    """One keypoint override: `name` is the keypoint, `bone` the armature bone standing for it."""

    bone: StringProperty(name="Bone", description="Bone whose head (or tail) is this keypoint")
    use_tail: BoolProperty(name="Tail", description="Use the bone's tail instead of its head")


class ViewfinderPoseSettings(bpy.types.PropertyGroup):
    is_person: BoolProperty(
        name="Is a Person", default=True,
        description="Draw this armature as a person in the pose control maps",
    )
    bones: CollectionProperty(type=ViewfinderPoseBone, name="Keypoint Overrides")


classes = (ViewfinderPoseBone, ViewfinderPoseSettings)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register_classes()
    bpy.types.Object.viewfinder_pose = PointerProperty(type=ViewfinderPoseSettings)


def unregister() -> None:
    del bpy.types.Object.viewfinder_pose
    _unregister_classes()
