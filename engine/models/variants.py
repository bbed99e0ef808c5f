"""Pipeline variants and their ControlNet arguments, per family (engine/models/families.py). Worker thread.

A variant is the family's pipeline class built from the loaded modules around exactly the nets a
call runs, so variants cost no memory. It is named by a tuple: the map kinds of per-map nets in
NET_ORDER (``("depth", "pose")``), or ``("union",) * n`` for the union ControlNet run ``n`` times.

How maps reach a union net (``control_call``):
- SDXL (``ControlNetUnionModel``) fuses several maps in one pass, each tagged with its control mode,
  under one conditioning scale and one [start, end]. When a call's maps share their weight and range
  (the usual case) they go in that one pass; when they differ, each map gets its own pass of the same
  net (``MultiControlNetUnionModel`` holding it once per map), so every map keeps its own weight and
  range exactly as with per-map nets.
- Flux (``FluxControlNetModel`` with modes) runs once per map inside ``FluxMultiControlNetModel``,
  which takes a weight and a range per map (``flux_multi``: each map's mode given to every frame).
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

from .families import FAMILIES

if TYPE_CHECKING:
    from .pipelines import LoadedModels


def _init_params(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def variant(models: LoadedModels, nets: tuple[str, ...]) -> Any:
    """The text-to-image pipeline around ``nets`` (map kinds, or ``("union",) * n``), built once."""
    if nets not in models.variants:
        models.variants[nets] = build(models, nets, img2img=False)
    return models.activate(models.variants[nets])


def img2img_variant(models: LoadedModels, nets: tuple[str, ...]) -> Any:
    """The img2img pipeline (FLOW coherence) around ``nets``, built once."""
    if nets not in models.img2img_variants:
        models.img2img_variants[nets] = build(models, nets, img2img=True)
    return models.activate(models.img2img_variants[nets])


def build(models: LoadedModels, nets: tuple[str, ...], img2img: bool) -> Any:
    """The pipeline of ``models``' family around ``nets`` (text-to-image, or img2img for FLOW)."""
    import diffusers

    fam = FAMILIES[models.family]
    union = bool(nets) and nets[0] == "union"
    if not nets:
        name = fam.img2img_pipeline if img2img else fam.base_pipeline
    elif union:
        name = fam.union_img2img_pipeline if img2img else fam.union_pipeline
    else:
        name = fam.per_map_img2img_pipeline if img2img else fam.per_map_pipeline
    if not name:
        raise RuntimeError(f"{fam.label} has no {'img2img ' if img2img else ''}pipeline for nets {nets}")
    if not nets and not img2img:
        return models.base
    cls = getattr(diffusers, name)
    components = {k: v for k, v in models.base.components.items() if k != "controlnet"}
    if nets:
        components["controlnet"] = _controlnet(models, nets)
    if "requires_safety_checker" in _init_params(cls):
        components["requires_safety_checker"] = False
    if "add_watermarker" in _init_params(cls):
        components["add_watermarker"] = False
    pipe = cls(**{k: v for k, v in components.items() if k in _init_params(cls)})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _controlnet(models: LoadedModels, nets: tuple[str, ...]) -> Any:
    """The ``controlnet`` module of a variant: one net, several stacked, or the union net (repeated)."""
    from diffusers import MultiControlNetModel
    from diffusers.models import MultiControlNetUnionModel

    if nets[0] != "union":
        loaded = [models.nets[name] for name in nets]
        return loaded[0] if len(loaded) == 1 else MultiControlNetModel(loaded)
    union = models.nets["union"]
    if models.family == "flux":
        return flux_multi()([union])
    return union if len(nets) == 1 else MultiControlNetUnionModel([union] * len(nets))


@functools.cache
def flux_multi() -> type:
    """``FluxMultiControlNetModel`` that gives each map's control mode to every frame of the call.

    diffusers' Flux img2img ControlNet pipeline (0.36) passes one mode per map (``reshape([-1, 1])``), where its
    text-to-image pipeline expands each to the batch: with two or more frames in one img2img call (FLOW shots
    interleaved, engine/jobs/flow.py) the mode embedding has a batch of 1 against the prompt's and Flux's
    ``torch.cat`` fails. Expanding here serves both pipelines (the text-to-image one's modes are already
    expanded, so nothing changes for it).
    """
    from diffusers import FluxMultiControlNetModel

    class BatchedFluxMultiControlNetModel(FluxMultiControlNetModel):
        def forward(self, hidden_states: Any, controlnet_cond: Any, controlnet_mode: Any, *args: Any,
                    **kwargs: Any) -> Any:
            if controlnet_mode is not None:
                controlnet_mode = [mode.reshape(-1)[:1].expand(hidden_states.shape[0]) for mode in controlnet_mode]
            return super().forward(hidden_states, controlnet_cond, controlnet_mode, *args, **kwargs)

    return BatchedFluxMultiControlNetModel


def control_call(models: LoadedModels, active: tuple[str, ...], images: list[Any], scales: list[float],
                 ranges: list[tuple[float, float]], img2img: bool) -> tuple[Any, dict[str, Any]]:
    """The variant to run and its ControlNet keyword arguments, for maps ``active`` (NET_ORDER), their ``images``
    (one tensor per map, a row per frame), weights and [start, end] ranges."""
    pick = img2img_variant if img2img else variant
    if not active:
        return pick(models, ()), {}
    if models.key.union is None:
        key = "control_image" if img2img else "image"
        return pick(models, active), _per_net(key, images, scales, ranges)
    modes = [FAMILIES[models.family].union_modes[kind] for kind in active]
    if models.family == "flux" or len(set(zip(scales, ranges, strict=True))) > 1:
        # One pass per map: its own weight and range.
        nets = ("union",) if models.family == "flux" else ("union",) * len(active)
        return pick(models, nets), {"control_image": images, "control_mode": modes,
                               "controlnet_conditioning_scale": scales,
                               "control_guidance_start": [s for s, _ in ranges],
                               "control_guidance_end": [e for _, e in ranges]}
    return pick(models, ("union",)), {"control_image": images, "control_mode": modes,
                                 "controlnet_conditioning_scale": scales[0],
                                 "control_guidance_start": ranges[0][0], "control_guidance_end": ranges[0][1]}


def _per_net(image_key: str, images: list[Any], scales: list[float],
             ranges: list[tuple[float, float]]) -> dict[str, Any]:
    """Per-map nets: one net passes single values, several pass lists. Start and end are one value while
    every net shares them (the call every job made before per-map ranges), else one per net."""
    shared = len(set(ranges)) == 1
    return {
        image_key: images[0] if len(images) == 1 else images,
        "controlnet_conditioning_scale": scales[0] if len(scales) == 1 else scales,
        "control_guidance_start": ranges[0][0] if shared else [start for start, _ in ranges],
        "control_guidance_end": ranges[0][1] if shared else [end for _, end in ranges],
    }
