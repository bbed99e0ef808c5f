"""The selected take's metadata and actions, drawn in the Sequencer sidebar (panels/sequencer.py)."""

from __future__ import annotations

import bpy

from ..core.timeline.takes import DRAFT, read_take, take_tier
from ..operators.takes import take_dir_of

TIER_LABELS = {"draft": "Draft", "final": "Final", "finalized": "Finalized (Finalize Take)"}


def draw_take(layout: bpy.types.UILayout, strip) -> None:
    """The take's metadata and actions, for the Sequencer sidebar."""
    info = read_take(take_dir_of(strip))
    layout.label(text=strip.name, icon="SEQUENCE")
    tier = take_tier(info)
    if info is None:
        layout.label(text="take.json is missing or unreadable", icon="ERROR")
    else:
        col = layout.column(align=True)
        col.label(text=f"Tier: {TIER_LABELS.get(tier, tier)}", icon="SHADERFX" if tier == DRAFT else "CHECKMARK")
        col.label(text=f"Prompt: {info.prompt or '—'}")
        if info.style_prompt:
            col.label(text=f"Style: {info.style_prompt}")
        if info.negative_prompt:
            col.label(text=f"Negative: {info.negative_prompt}")
        col.label(text=f"Seed: {info.seed}")
        if info.characters:
            col.label(text=f"Characters: {', '.join(c['name'] for c in info.characters)}", icon="COMMUNITY")
        col.label(text=f"Model: {info.models.get('base', '?')}")
        col.label(text=f"Made: {info.created}")
    row = layout.row(align=True)
    row.operator("viewfinder.use_take", icon="CHECKMARK")
    row.operator("viewfinder.regenerate_take", icon="FILE_REFRESH")
    if tier == DRAFT:
        layout.operator("viewfinder.final_from_draft", icon="RENDER_STILL")
    layout.operator("viewfinder.open_take_folder", icon="FILE_FOLDER")
    layout.operator("viewfinder.finalize_take", icon="ZOOM_IN")
