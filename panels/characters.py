"""Viewfinder tab ▸ Characters (the bible, with reference thumbnails) and Film Look."""

from __future__ import annotations

import bpy

from ..core.scene.characters import problem_of
from .families import draw_unavailable
from .view3d import ViewfinderPanel

THUMBNAIL_SCALE = 5.0


class VIEWFINDER_UL_characters(bpy.types.UIList):
    """Characters: name, armature, reference count, and a warning when the character stands for nothing."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):  # noqa: D102
        row = layout.row(align=True)
        problem = problem_of(item)
        row.prop(item, "name", text="", emboss=False, icon="ERROR" if problem else "OUTLINER_OB_ARMATURE")
        sub = row.row(align=True)
        sub.alignment = "RIGHT"
        sub.label(text=str(len(item.references)), icon="IMAGE_DATA")


class VIEWFINDER_UL_references(bpy.types.UIList):
    """A character's reference images, each with a small preview."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):  # noqa: D102
        if item.image is None:
            layout.label(text="(image removed)", icon="ERROR")
            return
        layout.label(text=item.image.name, icon_value=layout.icon(item.image))


class VIEWFINDER_PT_characters(ViewfinderPanel, bpy.types.Panel):
    bl_label = "Characters"
    bl_idname = "VIEWFINDER_PT_characters"
    bl_parent_id = "VIEWFINDER_PT_shots"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.viewfinder
        # A family without regional characters (Flux.1): the reason, and the bible greyed out but kept,
        # for a switch back (Image shots leave it unsent, with a warning; Video shots still use it).
        unavailable = draw_unavailable(layout, settings, "regional_characters")
        if unavailable:
            layout = layout.column()
            layout.active = False
        row = layout.row()
        row.template_list("VIEWFINDER_UL_characters", "", settings, "characters", settings,
                          "active_character_index", rows=3)
        col = row.column(align=True)
        col.operator("viewfinder.add_character", icon="ADD", text="")
        col.operator("viewfinder.remove_character", icon="REMOVE", text="").character = ""
        if not settings.characters:
            layout.label(text="Select an armature, then Add Character from Selection")
            return
        character = settings.characters[min(settings.active_character_index, len(settings.characters) - 1)]
        problem = problem_of(character)
        if problem:
            layout.label(text=f"'{character.name}': {problem}", icon="ERROR")
        layout.prop(character, "description", text="", icon="TEXT")
        layout.use_property_split = True
        layout.prop(character, "armature")
        for index, item in enumerate(character.extra_objects):
            layout.prop(item, "object", text="Also" if index == 0 else " ")
        layout.prop(character, "collection")
        layout.prop(character, "identity_strength")
        layout.prop(character, "lora")
        if character.lora:
            layout.prop(character, "lora_scale")
            layout.prop(character, "trigger_words")
        layout.use_property_split = False

        # References: a list, and a large preview of the active one.
        layout.label(text="References")
        if not unavailable and draw_unavailable(layout, settings, "ip_adapter_masks"):
            layout = layout.column()
            layout.active = False
        row = layout.row()
        row.template_list("VIEWFINDER_UL_references", "", character, "references", character,
                          "active_reference_index", rows=2)
        col = row.column(align=True)
        col.operator("viewfinder.add_reference", icon="ADD", text="")
        col.operator("viewfinder.remove_reference", icon="REMOVE", text="").index = -1
        if character.references:
            active = character.references[min(character.active_reference_index, len(character.references) - 1)]
            if active.image is not None:
                layout.template_icon(icon_value=layout.icon(active.image), scale=THUMBNAIL_SCALE)
        layout.operator("viewfinder.make_reference_sheet", icon="OUTLINER_OB_IMAGE")
        if character.sheet:
            box = layout.box()
            box.label(text="Reference sheet: keep the views you like")
            grid = box.grid_flow(columns=len(character.sheet), even_columns=True)
            for item in character.sheet:
                if item.image is None:
                    continue
                col = grid.column()
                col.template_icon(icon_value=col.icon(item.image), scale=THUMBNAIL_SCALE / 2)
                op = col.operator("viewfinder.add_reference", text="Keep", icon="CHECKMARK")
                op.image = item.image.name


class VIEWFINDER_PT_film_look(ViewfinderPanel, bpy.types.Panel):
    bl_label = "Film Look"
    bl_idname = "VIEWFINDER_PT_film_look"
    bl_parent_id = "VIEWFINDER_PT_shots"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.viewfinder
        layout.prop(settings, "style_prompt", text="Style")
        layout.use_property_split = True
        # The style reference goes through the IP-Adapter; the palette is matched after, on every family.
        references = layout.column()
        if draw_unavailable(references, settings, "ip_adapter_masks"):
            references.active = False
        references.template_ID(settings, "style_reference", open="image.open")
        if settings.style_reference is not None:
            references.template_icon(icon_value=layout.icon(settings.style_reference), scale=THUMBNAIL_SCALE)
            references.prop(settings, "style_strength")
        references.prop(settings, "ip_adapter")
        references.prop(settings, "image_encoder")
        if not settings.ip_adapter:
            references.label(text="No IP-Adapter: reference images are not used", icon="INFO")
        layout.template_ID(settings, "palette_reference", open="image.open")
        if settings.palette_reference is not None:
            layout.template_icon(icon_value=layout.icon(settings.palette_reference), scale=THUMBNAIL_SCALE / 2)


classes = (VIEWFINDER_UL_characters, VIEWFINDER_UL_references, VIEWFINDER_PT_characters, VIEWFINDER_PT_film_look)
register, unregister = bpy.utils.register_classes_factory(classes)
