"""The Film panel's model family block (issue 24): the family, its union ControlNet, a single file's config,
and each feature the family cannot do with the reason. Drawn by ``VIEWFINDER_PT_film``; no classes of its own.

Main thread (drawing).
"""

from __future__ import annotations

from typing import Any

from ..core.jobs.families import DEFAULT_SIZE, FAMILY_ITEMS, request_name, supports, unavailable, wrap


def draw_family(layout: Any, settings: Any) -> None:
    """Only what the chosen family supports, and why the rest is unavailable."""
    family = request_name(settings)
    layout.prop(settings, "model_family")
    if supports(family, "union_controlnet"):
        layout.prop(settings, "controlnet_union")
        if settings.controlnet_union:
            layout.label(text="Every map goes to the union ControlNet", icon="INFO")
    if supports(family, "single_file") and settings.model.lower().endswith(".safetensors"):
        layout.prop(settings, "base_config")
    trained = max(DEFAULT_SIZE[family])
    if settings.long_edge * 2 <= trained:
        label = dict((i, n) for i, n, _ in FAMILY_ITEMS)[settings.model_family]
        layout.label(text=f"{label} is made for {trained} px frames; Long Edge is {settings.long_edge}", icon="INFO")
    for name, reason in unavailable(family):
        column = layout.column(align=True)
        column.label(text=f"{name}: not with this family", icon="CANCEL")
        for line in wrap(reason):
            column.label(text=line)
