"""The character bible: `scene.viewfinder.characters` (the film look's settings sit on `scene.viewfinder`).

Objects and images are held by PointerProperty, not by name, so a character
survives renames and save/reload; a deleted armature leaves the pointer empty
and `armature_name` remembers what it was, for the message.
See core/jobs/characters.py for how characters become the engine's `characters` block.
"""

from __future__ import annotations

import bpy
from bpy.props import (
    CollectionProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

# Blender 4.5+ warns when a "//" path is set on a FILE_PATH property that does not declare it; 4.2 lacks the flag.
_RELATIVE_PATH = {"PATH_SUPPORTS_BLEND_RELATIVE"} if bpy.app.version >= (4, 5, 0) else set()


def _is_armature(_self: object, obj: bpy.types.Object) -> bool:
    return obj.type == "ARMATURE"


def _remember_armature(self: ViewfinderCharacter, _context: bpy.types.Context) -> None:
    if self.armature is not None:
        self.armature_name = self.armature.name


class ViewfinderObjectRef(bpy.types.PropertyGroup):
    """An extra object a character stands for (props, a hat, a mesh no armature deforms)."""

    object: PointerProperty(name="Object", type=bpy.types.Object)


class ViewfinderReference(bpy.types.PropertyGroup):
    """One reference image: a Blender image (loaded from a file, packed, or rendered)."""

    image: PointerProperty(name="Image", type=bpy.types.Image, description="Reference image of the character")


class ViewfinderCharacter(bpy.types.PropertyGroup):
    """One character: the objects it stands for, how it looks, and how strongly to hold it."""

    armature: PointerProperty(
        name="Armature", type=bpy.types.Object, poll=_is_armature, update=_remember_armature,
        description="The character's rig: it and every mesh it deforms belong to the character",
    )
    # The armature's last known name, for the message when it is deleted.
    armature_name: StringProperty(options={"HIDDEN"})
    extra_objects: CollectionProperty(type=ViewfinderObjectRef, name="Extra Objects")
    active_object_index: IntProperty(options={"HIDDEN"})
    collection: PointerProperty(
        name="Collection", type=bpy.types.Collection,
        description="Optional: every object in this collection also belongs to the character",
    )
    description: StringProperty(
        name="Description", description="What the character looks like: conditions the frame inside its mask",
    )
    references: CollectionProperty(type=ViewfinderReference, name="References")
    active_reference_index: IntProperty(name="Active Reference", default=0, min=0)
    sheet: CollectionProperty(type=ViewfinderReference, name="Reference Sheet", options={"HIDDEN"})
    identity_strength: FloatProperty(
        name="Identity Strength", default=0.6, min=0.0, max=2.0, soft_max=1.2,
        description="How strongly the references hold the character's look inside its mask (IP-Adapter scale)",
    )
    lora: StringProperty(
        name="LoRA", subtype="FILE_PATH", options=_RELATIVE_PATH,
        description="Optional LoRA (.safetensors) trained on this character",
    )
    lora_scale: FloatProperty(name="LoRA Scale", default=1.0, min=0.0, max=4.0, soft_max=2.0)
    trigger_words: StringProperty(
        name="Trigger Words", description="The LoRA's trigger words, appended to the character's description",
    )


classes = (ViewfinderObjectRef, ViewfinderReference, ViewfinderCharacter)
register, unregister = bpy.utils.register_classes_factory(classes)
