"""The "Viewfinder" tab in the 3D View sidebar: shots, the active shot, the film's settings."""

from __future__ import annotations

import bpy

from ..core.jobs.families import map_why_not, request_name, supports, wrap
from ..core.jobs.request import MAP_KINDS
from ..core.scene import shots as shots_core
from ..core.scene.resolution import scene_size
from .families import draw_family, draw_unavailable

MAP_LABELS = {"depth": "Depth", "pose": "Pose", "normal": "Normal", "lineart": "Line Art", "seg": "Segmentation"}


class VIEWFINDER_UL_shots(bpy.types.UIList):
    """Shot list: name, frames, camera, and a warning when the shot cannot be generated."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):  # noqa: D102
        row = layout.row(align=True)
        row.label(text=item.name, icon="ERROR" if item.problem else "SEQUENCE")
        sub = row.row(align=True)
        sub.alignment = "RIGHT"
        sub.label(text=f"{item.frame_start}–{item.frame_end}")
        sub.label(text=item.camera.name if item.camera else "—", icon="CAMERA_DATA")


def active_shot(settings: bpy.types.PropertyGroup) -> bpy.types.PropertyGroup | None:
    """The shot the Shots list has selected (the last one when the index runs past the list), or None."""
    shots = settings.shot_list
    return shots[min(settings.active_shot_index, len(shots) - 1)] if len(shots) else None


class ViewfinderPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Viewfinder"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene is not None


class VIEWFINDER_PT_shots(ViewfinderPanel, bpy.types.Panel):
    bl_label = "Shots"
    bl_idname = "VIEWFINDER_PT_shots"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.viewfinder
        for problem in shots_core.plan_for_scene(context.scene).problems:
            layout.label(text=problem, icon="ERROR")
        row = layout.row()
        row.template_list("VIEWFINDER_UL_shots", "", settings, "shot_list", settings, "active_shot_index", rows=3)
        col = row.column(align=True)
        col.operator("viewfinder.add_shot", icon="ADD", text="")
        col.operator("viewfinder.sync_shots", icon="FILE_REFRESH", text="")
        col.operator("viewfinder.jump_to_shot", icon="VIEW_CAMERA", text="")
        row = layout.row(align=True)
        row.scale_y = 1.3
        row.operator("viewfinder.generate", text="Generate All", icon="RENDER_ANIMATION").shot = ""


class VIEWFINDER_PT_shot(ViewfinderPanel, bpy.types.Panel):
    bl_label = "Shot"
    bl_idname = "VIEWFINDER_PT_shot"
    bl_parent_id = "VIEWFINDER_PT_shots"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.viewfinder
        shot = active_shot(settings)
        if shot is None:
            layout.label(text="Bind a camera to a marker to make a shot")
            return
        if shot.problem:
            box = layout.box()
            for index, line in enumerate(_wrap(shot.problem, 48)):
                box.label(text=line, icon="ERROR" if index == 0 else "BLANK1")
        layout.prop(shot, "prompt", text="")
        layout.prop(shot, "negative_prompt", text="", icon="REMOVE")
        layout.use_property_split = True
        layout.prop(shot, "seed")
        family = request_name(settings)
        col = layout.column(align=True)
        for kind in MAP_KINDS:
            row = col.row(align=True)
            row.active = not map_why_not(family, kind)  # rendered and shown, not sent: the reason below
            row.prop(shot, f"{kind}_weight")
        refused = map_why_not(family, *(kind for kind in MAP_KINDS if getattr(shot, f"{kind}_weight") > 0.0))
        if refused:
            sub = layout.column(align=True)
            for index, line in enumerate(wrap(refused)):
                sub.label(text=line, icon="INFO" if index == 0 else "BLANK1")
        if shot.lineart_weight > 0.0:
            col = layout.column(align=True)
            col.prop(shot, "lineart_form")
            sub = col.row(align=True)
            sub.active = shot.lineart_form != "CANNY"
            sub.prop(shot, "line_weight")
            col.prop(shot, "crease_angle")
        col = layout.column(align=True)
        col.prop(shot, "control_start")
        col.prop(shot, "control_end")
        layout.prop(shot, "generator")
        generator = settings.generator if shot.generator == "DEFAULT" else shot.generator
        if generator != "VIDEO":
            row = layout.row()
            row.active = supports(family, "draft")
            row.prop(shot, "tier")
            if (settings.tier if shot.tier == "DEFAULT" else shot.tier) == "DRAFT":
                draw_unavailable(layout, settings, "draft")  # generated at the final tier
        if generator == "VIDEO":
            layout.prop(shot, "reference_image")
        else:
            layout.prop(shot, "coherence")
        if generator != "VIDEO" and shot.coherence == "FLOW":
            layout.prop(shot, "flow_strength")
            layout.prop(shot, "keyframe_interval")
        layout.use_property_split = False
        row = layout.row(align=True)
        row.operator("viewfinder.render_conditioning", text="Control Maps", icon="IMAGE_ZDEPTH").shot = shot.name
        row.operator("viewfinder.generate", text="Generate Shot", icon="RENDER_STILL").shot = shot.name
        row = layout.row(align=True)
        for kind, icon in (("DEPTH", "IMAGE_ZDEPTH"), ("POSE", "ARMATURE_DATA"), ("ALL", "SEQ_SEQUENCER")):
            op = row.operator("viewfinder.preview_conditioning", text=f"Preview {kind.title()}", icon=icon)
            op.kind = kind
            op.shot = shot.name


class VIEWFINDER_PT_map_ranges(ViewfinderPanel, bpy.types.Panel):
    """Each map's own share of the denoising steps (off: the shot's Control Start/End)."""

    bl_label = "Map Ranges"
    bl_idname = "VIEWFINDER_PT_map_ranges"
    bl_parent_id = "VIEWFINDER_PT_shot"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.viewfinder
        shot = active_shot(settings)
        if shot is None:
            return
        family = request_name(settings)
        col = self.layout.column(align=True)
        for kind in MAP_KINDS:
            row = col.row(align=True)
            row.active = not map_why_not(family, kind)
            row.prop(shot, f"use_{kind}_range", text=MAP_LABELS[kind])
            sub = row.row(align=True)
            sub.active = getattr(shot, f"use_{kind}_range")
            sub.prop(shot, f"{kind}_start", text="")
            sub.prop(shot, f"{kind}_end", text="")


class VIEWFINDER_PT_film(ViewfinderPanel, bpy.types.Panel):
    bl_label = "Film"
    bl_idname = "VIEWFINDER_PT_film"
    bl_parent_id = "VIEWFINDER_PT_shots"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.viewfinder
        layout.prop(settings, "style_prompt", text="Style")
        layout.use_property_split = True
        layout.prop(settings, "model")
        draw_family(layout, settings)  # issue 24: the family, its union ControlNet, what it cannot do
        family = request_name(settings)
        if supports(family, "per_map_controlnets"):  # else the family block says why
            for kind in MAP_KINDS:
                layout.prop(settings, f"controlnet_{kind}")
        layout.prop(settings, "lora")
        if settings.lora:
            layout.prop(settings, "lora_scale")
        layout.prop(settings, "long_edge")
        width, height = scene_size(context.scene)
        layout.label(text=f"Frames: {width} × {height}")
        layout.prop(settings, "steps")
        layout.prop(settings, "guidance_scale")
        layout.prop(settings, "batch_size")
        layout.prop(settings, "generator")
        if supports(family, "draft"):  # else the family block says why
            col = layout.column(heading="Draft")
            col.prop(settings, "tier")
            col.prop(settings, "draft_scheduler")
            col.prop(settings, "draft_steps")
            col.prop(settings, "draft_guidance")
            col.prop(settings, "draft_half_size")
            col.prop(settings, "draft_tiny_vae")
            col.prop(settings, "draft_lora")
            if settings.draft_tiny_vae:
                col.prop(settings, "draft_tiny_vae_model")
        col = layout.column(heading="Video")
        col.prop(settings, "video_model_preset")
        if settings.video_model_preset == "CUSTOM":
            col.prop(settings, "video_model")
        elif settings.video_model_preset == "ANIMATEDIFF":
            col.prop(settings, "motion_adapter")
        col.prop(settings, "video_control")
        col.prop(settings, "video_window")
        col.prop(settings, "video_overlap")
        layout.use_property_split = False
        row = layout.row(align=True)
        row.operator("viewfinder.export_storyboard", icon="IMAGE_DATA", text="Storyboard")
        row.operator("viewfinder.export_animatic", icon="FILE_MOVIE", text="Animatic")


class VIEWFINDER_PT_pose(ViewfinderPanel, bpy.types.Panel):
    bl_label = "Pose Mapping"
    bl_idname = "VIEWFINDER_PT_pose"
    bl_parent_id = "VIEWFINDER_PT_shots"
    bl_options = {"DEFAULT_CLOSED"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        obj = context.active_object
        return obj is not None and obj.type == "ARMATURE" and hasattr(obj, "viewfinder_pose")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        obj = context.active_object
        settings = obj.viewfinder_pose
        layout.prop(settings, "is_person")
        col = layout.column(align=True)
        for item in settings.bones:
            row = col.row(align=True)
            row.label(text=item.name)
            row.prop_search(item, "bone", obj.data, "bones", text="")
            row.prop(item, "use_tail", text="", icon="BONE_DATA")
            row.operator("viewfinder.remove_pose_override", text="", icon="X").keypoint = item.name
        layout.operator("viewfinder.add_pose_override", icon="ADD")


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


classes = (VIEWFINDER_UL_shots, VIEWFINDER_PT_shots, VIEWFINDER_PT_shot, VIEWFINDER_PT_map_ranges, VIEWFINDER_PT_film,
           VIEWFINDER_PT_pose)
register, unregister = bpy.utils.register_classes_factory(classes)
