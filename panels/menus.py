"""Menu entries, which also make every operator findable with F3 (menu search)."""

from __future__ import annotations

import bpy


class VIEWFINDER_MT_main(bpy.types.Menu):
    bl_label = "Viewfinder"
    bl_idname = "VIEWFINDER_MT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.operator("viewfinder.generate", text="Generate All Shots", icon="RENDER_ANIMATION").shot = ""
        layout.operator("viewfinder.render_conditioning", text="Render Control Maps", icon="IMAGE_ZDEPTH").shot = ""
        layout.operator("viewfinder.preview_conditioning", text="Preview Control Maps", icon="SEQUENCE")
        layout.separator()
        layout.operator("viewfinder.add_shot", icon="ADD")
        layout.operator("viewfinder.sync_shots", icon="FILE_REFRESH")
        layout.operator("viewfinder.jump_to_shot", icon="VIEW_CAMERA")
        layout.separator()
        layout.operator("viewfinder.add_prompt_key", icon="ADD")
        layout.operator("viewfinder.remove_prompt_key", icon="REMOVE")
        layout.operator("viewfinder.import_deforum", icon="IMPORT")
        layout.separator()
        layout.operator("viewfinder.export_storyboard", icon="IMAGE_DATA")
        layout.operator("viewfinder.export_animatic", icon="FILE_MOVIE")
        layout.separator()
        layout.operator("viewfinder.restart_engine", icon="FILE_REFRESH")
        layout.operator("viewfinder.install_engine", icon="IMPORT")
        layout.separator()
        layout.operator("viewfinder.add_pose_override", icon="ARMATURE_DATA")
        layout.operator("viewfinder.remove_pose_override", icon="X")
        layout.separator()
        layout.menu(VIEWFINDER_MT_characters.bl_idname, icon="COMMUNITY")


class VIEWFINDER_MT_characters(bpy.types.Menu):
    bl_label = "Characters"
    bl_idname = "VIEWFINDER_MT_characters"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.operator("viewfinder.add_character", icon="ADD")
        layout.operator("viewfinder.remove_character", icon="REMOVE")
        layout.separator()
        layout.operator("viewfinder.add_reference", icon="IMAGE_DATA")
        layout.operator("viewfinder.remove_reference", icon="X")
        layout.operator("viewfinder.make_reference_sheet", icon="OUTLINER_OB_IMAGE")


class VIEWFINDER_MT_takes(bpy.types.Menu):
    bl_label = "Viewfinder Take"
    bl_idname = "VIEWFINDER_MT_takes"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.operator("viewfinder.use_take", icon="CHECKMARK")
        layout.operator("viewfinder.regenerate_take", icon="FILE_REFRESH")
        layout.operator("viewfinder.final_from_draft", icon="RENDER_STILL")
        layout.operator("viewfinder.open_take_folder", icon="FILE_FOLDER")
        layout.operator("viewfinder.finalize_take", icon="ZOOM_IN")


def _render_menu(self: bpy.types.Menu, context: bpy.types.Context) -> None:
    self.layout.separator()
    self.layout.menu(VIEWFINDER_MT_main.bl_idname, icon="CAMERA_DATA")


def _strip_menu(self: bpy.types.Menu, context: bpy.types.Context) -> None:
    self.layout.separator()
    self.layout.menu(VIEWFINDER_MT_takes.bl_idname)


def _object_menu(self: bpy.types.Menu, context: bpy.types.Context) -> None:
    self.layout.separator()
    self.layout.operator("viewfinder.add_character", icon="COMMUNITY")


def _marker_menu(self: bpy.types.Menu, context: bpy.types.Context) -> None:
    self.layout.separator()
    self.layout.operator("viewfinder.add_shot", icon="CAMERA_DATA")


_HOOKS = (
    ("TOPBAR_MT_render", _render_menu),
    ("SEQUENCER_MT_strip", _strip_menu),
    ("TIME_MT_marker", _marker_menu),  # the Timeline's Marker menu up to 4.x
    ("DOPESHEET_MT_marker", _marker_menu),  # the Timeline is a Dope Sheet mode from 5.0
    ("VIEW3D_MT_object", _object_menu),
)
classes = (VIEWFINDER_MT_characters, VIEWFINDER_MT_main, VIEWFINDER_MT_takes)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    for menu, func in _HOOKS:
        owner = getattr(bpy.types, menu, None)
        if owner is not None:  # menus differ a little between versions
            owner.append(func)


def unregister() -> None:
    for menu, func in reversed(_HOOKS):
        owner = getattr(bpy.types, menu, None)
        if owner is not None:
            owner.remove(func)
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
