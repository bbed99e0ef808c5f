"""Model families: what each image model the engine runs is, and what it can do (issue 24).

One small table instead of ``if family == ...`` spread through the engine: a ``Family`` names its
pipeline classes, the ControlNets it takes (one per map, or a union net with a control mode per
map), its default frame size and the multiple its sides must be, and which of the engine's
features work on it. Where a feature does not, ``why_not`` says why, in words a client shows
(the add-on's Film panel does, from its own copy in core/jobs/families.py; a unit test holds the
two equal). The README's capability table is this one, and tests/engine/test_families.py runs
every ``True`` here on tiny models.

Plain Python, no torch: read on the HTTP thread at submit and by the worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FamilyName = Literal["sd15", "sdxl", "flux"]
Capability = Literal["per_map_controlnets", "union_controlnet", "regional_characters", "ip_adapter_masks", "lora",
                     "draft", "flow", "prompt_travel", "single_file"]
CAPABILITIES: tuple[Capability, ...] = ("per_map_controlnets", "union_controlnet", "regional_characters",
                                        "ip_adapter_masks", "lora", "draft", "flow", "prompt_travel", "single_file")

# xinsir's ControlNet++ union for SDXL (ControlNetUnionModel; xinsir/controlnet-union-sdxl-1.0 and its
# promax file). Its modes, from the "ControlMode" section of xinsir6/ControlNetPlus README.md, the same
# indices as the promax test scripts there and diffusers' StableDiffusionXLControlNetUnionPipeline
# example (``control_mode=[3]`` for line art): 0 openpose, 1 depth, 2 thick line (scribble/hed/softedge),
# 3 thin line (canny/mlsd/lineart), 4 normal, 5 segment; promax adds 6 tile, 7 repaint. The add-on's
# line art is thin one-pixel lines in all three of its forms, so mode 3 for each.
SDXL_UNION_MODES: dict[str, int] = {"pose": 0, "depth": 1, "lineart": 3, "normal": 4, "seg": 5}
# InstantX/FLUX.1-dev-Controlnet-Union (and Shakker-Labs' Union-Pro, the same modes), its model card's
# "Control Mode" table: 0 canny, 1 tile, 2 depth, 3 blur, 4 pose, 5 gray, 6 lq. No normal or segment
# mode: those maps are refused for Flux (``Family.maps``). Line art goes in as canny (white edges on black).
FLUX_UNION_MODES: dict[str, int] = {"lineart": 0, "depth": 2, "pose": 4}


@dataclass(frozen=True)
class Family:
    """One image model family. ``why_not[c]`` is set exactly for the capabilities it lacks."""

    name: FamilyName
    label: str
    # diffusers pipeline classes: text-to-image without nets, with per-map nets, with the union net;
    # their img2img counterparts (FLOW). "" where the family has none.
    base_pipeline: str
    per_map_pipeline: str
    union_pipeline: str
    img2img_pipeline: str
    per_map_img2img_pipeline: str
    union_img2img_pipeline: str
    union_net: str  # the diffusers class of its union ControlNet
    union_modes: dict[str, int]
    default_size: tuple[int, int]
    side_multiple: int
    # Width of the text embeddings its denoiser attends to, for naming a LoRA's family in messages.
    cross_attention_dim: int
    union_example: str = ""
    why_not: dict[Capability, str] = field(default_factory=dict)

    def supports(self, capability: Capability) -> bool:
        return capability not in self.why_not

    @property
    def maps(self) -> tuple[str, ...]:
        """The control maps it can take at all (per-map nets take every map; a union only its modes')."""
        every = ("depth", "pose", "normal", "lineart", "seg")
        return every if self.supports("per_map_controlnets") else tuple(k for k in every if k in self.union_modes)

    def capabilities(self) -> dict[str, bool | str]:
        """``{capability: True | "why not"}``: the table the README and the add-on show."""
        return {c: True if self.supports(c) else self.why_not[c] for c in CAPABILITIES}


FLUX_JOINT_ATTENTION = ("Flux attends to text and image tokens jointly in one sequence through every block, so an "
                        "exact region mask would have to be built into all 19 double and 38 single blocks; not built, "
                        "and an approximate one would let characters' descriptions leak")

FAMILIES: dict[str, Family] = {
    "sd15": Family(
        name="sd15", label="SD 1.5", base_pipeline="StableDiffusionPipeline",
        per_map_pipeline="StableDiffusionControlNetPipeline", union_pipeline="",
        img2img_pipeline="StableDiffusionImg2ImgPipeline",
        per_map_img2img_pipeline="StableDiffusionControlNetImg2ImgPipeline", union_img2img_pipeline="",
        union_net="", union_modes={}, default_size=(512, 512), side_multiple=8, cross_attention_dim=768,
        why_not={"union_controlnet": "no union ControlNet exists for SD 1.5 in diffusers; one net per map "
                                     "(models.controlnet_depth, ...)"},
    ),
    "sdxl": Family(
        name="sdxl", label="SDXL", base_pipeline="StableDiffusionXLPipeline",
        per_map_pipeline="StableDiffusionXLControlNetPipeline",
        union_pipeline="StableDiffusionXLControlNetUnionPipeline", img2img_pipeline="StableDiffusionXLImg2ImgPipeline",
        per_map_img2img_pipeline="StableDiffusionXLControlNetImg2ImgPipeline",
        union_img2img_pipeline="StableDiffusionXLControlNetUnionImg2ImgPipeline", union_net="ControlNetUnionModel",
        union_modes=SDXL_UNION_MODES, default_size=(1024, 1024), side_multiple=8, cross_attention_dim=2048,
        union_example="xinsir/controlnet-union-sdxl-1.0",
    ),
    "flux": Family(
        name="flux", label="Flux.1", base_pipeline="FluxPipeline", per_map_pipeline="",
        union_pipeline="FluxControlNetPipeline", img2img_pipeline="FluxImg2ImgPipeline", per_map_img2img_pipeline="",
        union_img2img_pipeline="FluxControlNetImg2ImgPipeline", union_net="FluxControlNetModel",
        union_modes=FLUX_UNION_MODES,
        default_size=(1024, 1024), side_multiple=16, cross_attention_dim=4096,
        union_example="Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro",
        why_not={
            "per_map_controlnets": "Flux takes its maps through one union ControlNet (models.controlnet_union)",
            "regional_characters": FLUX_JOINT_ATTENTION,
            "ip_adapter_masks": "no Flux IP-Adapter is wired to per-character masks (" + FLUX_JOINT_ATTENTION + ")",
            "draft": "there is no LCM/TCD LoRA for Flux.1; use FLUX.1-schnell as the base for a few-step draft",
            "single_file": "single-file Flux checkpoints need their T5 and VAE from elsewhere; give a diffusers "
                           "folder (or Hub id) instead",
        },
    ),
}


def family(name: str) -> Family:
    """The family called ``name``; KeyError names the known ones (the schema limits the request's)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def label(name: str | None) -> str:
    """A family's name as messages say it ("SDXL"), or the name itself for one this engine does not run."""
    return FAMILIES[name].label if name in FAMILIES else (name or "an unknown family")
