"""The Viewfinder panel in the Sequencer sidebar: the selected strip's take."""

from __future__ import annotations

import bpy

from ..operators.takes import selected_take
from .takes import draw_take


class VIEWFINDER_PT_takes(bpy.types.Panel):
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "Viewfinder"
    bl_label = "Take"
    bl_idname = "VIEWFINDER_PT_takes"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene is not None

    def draw(self, context: bpy.types.Context) -> None:
        strip = selected_take(context)
        if strip is None:
            self.layout.label(text="Select a Viewfinder take strip")
            return
        draw_take(self.layout, strip)


classes = (VIEWFINDER_PT_takes,)
register, unregister = bpy.utils.register_classes_factory(classes)
