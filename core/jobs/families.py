"""The image model families, as the add-on shows and sends them (issue 24).

The add-on's copy of the engine's table (engine/models/families.py), which it cannot import (the engine
runs elsewhere, with torch): what each family is called in the request, its default frame size and side
multiple, the union ControlNet it takes, and why a feature is unavailable on it. The Film panel shows
only what the chosen family supports and these reasons for the rest; tests/unit/test_families.py holds
this copy equal to the engine's.

Plain Python; any thread.
"""

from __future__ import annotations

from typing import Any

# (Blender enum id, label, tooltip); the request's ``models.family`` is ``REQUEST_NAMES[id]``.
FAMILY_ITEMS = [
    ("SD15", "SD 1.5", "Stable Diffusion 1.5 and its fine-tunes: one ControlNet per map, every feature"),
    ("SDXL", "SDXL", "Stable Diffusion XL and its fine-tunes: a union ControlNet for every map (or one per map)"),
    ("FLUX", "Flux.1", "Flux.1 dev/schnell: its union ControlNet takes depth, pose and line art"),
]
REQUEST_NAMES = {"SD15": "sd15", "SDXL": "sdxl", "FLUX": "flux"}

DEFAULT_SIZE = {"sd15": (512, 512), "sdxl": (1024, 1024), "flux": (1024, 1024)}
SIDE_MULTIPLE = {"sd15": 8, "sdxl": 8, "flux": 16}
UNION_EXAMPLE = {"sd15": "", "sdxl": "xinsir/controlnet-union-sdxl-1.0",
                 "flux": "Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro"}
# The maps each family's ControlNets can take (Flux's union has no normal or segmentation mode).
MAPS = {"sd15": ("depth", "pose", "normal", "lineart", "seg"), "sdxl": ("depth", "pose", "normal", "lineart", "seg"),
        "flux": ("depth", "pose", "lineart")}

CAPABILITY_LABELS = {
    "per_map_controlnets": "One ControlNet per map", "union_controlnet": "Union ControlNet",
    "regional_characters": "Characters", "ip_adapter_masks": "Reference images", "lora": "LoRA",
    "draft": "Draft tier", "flow": "FLOW coherence", "prompt_travel": "Prompt travel",
    "single_file": "Single-file checkpoints",
}

_FLUX_JOINT_ATTENTION = ("Flux attends to text and image tokens jointly in one sequence through every block, so an "
                         "exact region mask would have to be built into all 19 double and 38 single blocks; not "
                         "built, and an approximate one would let characters' descriptions leak")
WHY_NOT: dict[str, dict[str, str]] = {
    "sd15": {"union_controlnet": "no union ControlNet exists for SD 1.5 in diffusers; one net per map "
                                 "(models.controlnet_depth, ...)"},
    "sdxl": {},
    "flux": {
        "per_map_controlnets": "Flux takes its maps through one union ControlNet (models.controlnet_union)",
        "regional_characters": _FLUX_JOINT_ATTENTION,
        "ip_adapter_masks": "no Flux IP-Adapter is wired to per-character masks (" + _FLUX_JOINT_ATTENTION + ")",
        "draft": "there is no LCM/TCD LoRA for Flux.1; use FLUX.1-schnell as the base for a few-step draft",
        "single_file": "single-file Flux checkpoints need their T5 and VAE from elsewhere; give a diffusers "
                       "folder (or Hub id) instead",
    },
}


def request_name(settings: Any) -> str:
    """The request's ``models.family`` for the scene settings (``scene.viewfinder``)."""
    return REQUEST_NAMES[settings.model_family]


def supports(family: str, capability: str) -> bool:
    return capability not in WHY_NOT[family]


def why_not(family: str, capability: str) -> str:
    """Why ``family`` cannot do ``capability``, or "" when it can: what a panel shows in place of the feature."""
    return WHY_NOT[family].get(capability, "")


def map_why_not(family: str, *kinds: str) -> str:
    """Why ``family``'s ControlNets cannot take those of ``kinds`` maps they cannot, or "" when they take them
    all (Flux.1's union has no normal or seg mode)."""
    refused = [kind for kind in kinds if kind not in MAPS[family]]
    if not refused:
        return ""
    return (f"{label(family)}'s union ControlNet has no {' or '.join(refused)} mode (it takes "
            f"{', '.join(MAPS[family])}): rendered and shown, not sent")


def label(family: str) -> str:
    """The family's name as the UI says it ("Flux.1")."""
    return next(name for item, name, _ in FAMILY_ITEMS if REQUEST_NAMES[item] == family)


def unavailable(family: str) -> list[tuple[str, str]]:
    """(label, reason) of every feature ``family`` lacks, for the Film panel."""
    return [(CAPABILITY_LABELS[c], reason) for c, reason in WHY_NOT[family].items()]


def wrap(text: str, width: int = 52) -> list[str]:
    """A reason in lines a sidebar label can show (labels do not wrap)."""
    import textwrap

    return textwrap.wrap(text, width) or [""]
