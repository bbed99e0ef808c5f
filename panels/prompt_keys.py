"""The "Prompt Travel" panel under the active shot: prompt keys, which are active now, guidance."""

from __future__ import annotations

import bpy

from .view3d import ViewfinderPanel, active_shot


class VIEWFINDER_UL_prompt_keys(bpy.types.UIList):
    """Prompt keys: the prompt, its weight at the current frame, and whether it shows on this frame."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):  # noqa: D102
        total = sum(k.weight for k in data.prompt_keys)
        share = item.weight / total if total > 0 else 0.0
        row = layout.row(align=True)
        row.label(text="", icon="RADIOBUT_ON" if share > 0 else "RADIOBUT_OFF")
        row.prop(item, "prompt", text="", emboss=False)
        sub = row.row(align=True)
        sub.alignment = "RIGHT"
        sub.label(text=f"{share:.0%}" if share > 0 else "—")
        sub.prop(item, "weight", text="")


class VIEWFINDER_PT_prompt_keys(ViewfinderPanel, bpy.types.Panel):
    bl_label = "Prompt Travel"
    bl_idname = "VIEWFINDER_PT_prompt_keys"
    bl_parent_id = "VIEWFINDER_PT_shot"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene is not None and len(context.scene.viewfinder.shot_list) > 0

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.viewfinder
        shot = active_shot(settings)
        row = layout.row()
        row.template_list("VIEWFINDER_UL_prompt_keys", "", shot, "prompt_keys", shot, "active_prompt_key_index",
                          rows=3)
        col = row.column(align=True)
        col.operator("viewfinder.add_prompt_key", icon="ADD", text="")
        col.operator("viewfinder.remove_prompt_key", icon="REMOVE", text="")
        col.separator()
        col.operator("viewfinder.import_deforum", icon="IMPORT", text="")
        if not shot.prompt_keys:
            layout.label(text="No keys: every frame uses the shot prompt", icon="INFO")
        elif not any(k.weight > 0 for k in shot.prompt_keys):
            layout.label(text="All weights are 0 here: this frame uses the shot prompt", icon="ERROR")
        row = layout.row(align=True)
        row.prop(shot, "use_guidance_scale", text="")
        sub = row.row(align=True)
        sub.active = shot.use_guidance_scale
        sub.prop(shot, "guidance_scale", text="Shot Guidance")


classes = (VIEWFINDER_UL_prompt_keys, VIEWFINDER_PT_prompt_keys)
register, unregister = bpy.utils.register_classes_factory(classes)
