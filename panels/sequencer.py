"""The Viewfinder panel in the Sequencer sidebar: the selected strip's take."""

from __future__ import annotations

import bpy

from ..core.compat import active_strip


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
        layout = self.layout
        editor = context.scene.sequence_editor
        strip = active_strip(editor) if editor is not None else None
        draw_take = getattr(self, "draw_take", None)
        if strip is None or not strip.get("viewfinder_take"):
            layout.label(text="Select a Viewfinder take strip")
            return
        if draw_take is not None:
            draw_take(context, strip)


classes = (VIEWFINDER_PT_takes,)
register, unregister = bpy.utils.register_classes_factory(classes)
