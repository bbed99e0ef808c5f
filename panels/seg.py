"""Segmentation class of an object or a collection, in the Properties editor (Object and Collection tabs).

Each panel shows the field and, when it is empty, the class the maps will use and where it comes
from (the collection's, the guess, or the default), so the override is never a blind one.
"""

from __future__ import annotations

from typing import Any

import bpy

from ..core.conditioning import masks, seg


def class_in_use(obj: Any) -> seg.SegClass:
    """The class `obj` gets in the segmentation map, as the render decides it (seg.classify)."""
    info = seg.object_infos({obj: 1}, masks.owner_of)[1]
    return seg.classify(info)[0]


class SegPanel:
    """A closed "Viewfinder" panel in the Properties editor (``bl_context``: the tab it sits in)."""

    bl_label = "Viewfinder"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_options = {"DEFAULT_CLOSED"}


class VIEWFINDER_PT_object_seg(SegPanel, bpy.types.Panel):
    bl_idname = "VIEWFINDER_PT_object_seg"
    bl_context = "object"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        obj = context.object
        return obj is not None and obj.type in masks.RENDERABLE | {"ARMATURE"}

    def draw(self, context: bpy.types.Context) -> None:
        obj = context.object
        self.layout.prop(obj, "viewfinder_seg_class")
        used = class_in_use(obj)
        where = {"user": "set here", "collection": "from its collection", "guess": "guessed from its name or shape",
                 "default": "the default: set one"}[used.source]
        self.layout.label(text=f"Segmentation: {used.label} ({where})",
                          icon="ERROR" if used.source == "default" else "INFO")


class VIEWFINDER_PT_collection_seg(SegPanel, bpy.types.Panel):
    bl_idname = "VIEWFINDER_PT_collection_seg"
    bl_context = "collection"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return getattr(context, "collection", None) is not None

    def draw(self, context: bpy.types.Context) -> None:
        self.layout.prop(context.collection, "viewfinder_seg_class")
        self.layout.label(text="Objects with a class of their own keep it", icon="INFO")


classes = (VIEWFINDER_PT_object_seg, VIEWFINDER_PT_collection_seg)
register, unregister = bpy.utils.register_classes_factory(classes)
