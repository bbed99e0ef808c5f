"""What the chosen model family can do, in the panels (issue 24): the Film panel's family block (the family, its
union ControlNet, a single file's config, each feature the family cannot do with the reason), and the reason a
panel shows in place of a feature the family lacks (``draw_unavailable``: Characters, Film Look, the draft tier,
maps its ControlNets have no mode for). No classes of its own.

Which features and maps a family lacks, and why, is decided by core/jobs/families.py (``why_not``,
``map_why_not``); these functions only draw it. Main thread (drawing).
"""

from __future__ import annotations

from typing import Any

from ..core.jobs.families import DEFAULT_SIZE, label, request_name, supports, unavailable, why_not, wrap


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
        layout.label(text=f"{label(family)} is made for {trained} px frames; Long Edge is {settings.long_edge}",
                     icon="INFO")
    for name, reason in unavailable(family):
        draw_reason(layout, f"{name}: not with this family", reason)


def draw_unavailable(layout: Any, settings: Any, capability: str) -> bool:
    """Where the chosen family lacks ``capability``: say so and why, and return True (the caller greys the
    feature out: its settings stay, for a switch back to a family that has it)."""
    family = request_name(settings)
    reason = why_not(family, capability)
    if reason:
        draw_reason(layout, f"Not used with {label(family)}:", reason)
    return bool(reason)


def draw_reason(layout: Any, title: str, reason: str) -> None:
    column = layout.column(align=True)
    column.label(text=title, icon="CANCEL")
    for line in wrap(reason):
        column.label(text=line)
