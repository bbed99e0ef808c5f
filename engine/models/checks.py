"""Submit-time checks that a job's models fit its family (issue 24): before anything is loaded.

Every model the request names is identified from what is on disk without loading it: a folder's
``model_index.json``/``config.json``, a single file's safetensors header (``headers.py``), or for a
Hub id the same files when they are in the Hugging Face cache (a Hub model that is not cached is
checked when it loads). A model from another family, a single file whose family cannot be told, a
union ControlNet given as a plain one (or the reverse), a map or feature the family cannot take:
each is a 400 naming the field, the file and the fix. HTTP thread; plain Python, no torch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..contract.errors import BadRequest
from ..contract.schema import (
    DEFAULT_DEPTH,
    DEFAULT_LINEART,
    DEFAULT_NORMAL,
    DEFAULT_POSE,
    DEFAULT_SEG,
    LINEART_PRESETS,
    MAP_KINDS,
    JobRequest,
)
from . import headers
from .families import FAMILIES, Family, label
from .headers import Identified
from .refs import ModelRef, shown

logger = logging.getLogger(__name__)

# The class names in a pipeline folder's model_index.json, and in a ControlNet folder's config.json.
PIPELINE_CLASSES = {"StableDiffusionPipeline": "sd15", "StableDiffusionControlNetPipeline": "sd15",
                    "StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLControlNetPipeline": "sdxl",
                    "FluxPipeline": "flux", "FluxControlNetPipeline": "flux",
                    "StableDiffusionUpscalePipeline": "sd2", "StableDiffusion3Pipeline": "sd3"}
# The SD 1.5 ControlNets the request defaults to (and the line-art presets): on another family they can
# only be a forgotten default, told without looking them up.
SD15_NET_IDS = {DEFAULT_DEPTH, DEFAULT_POSE, DEFAULT_NORMAL, DEFAULT_LINEART, DEFAULT_SEG, *LINEART_PRESETS.values()}


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def config_file(ref: ModelRef, name: str) -> dict[str, Any] | None:
    """``name`` (e.g. "unet/config.json") of a folder model, or of a Hub model from the local cache only."""
    if ref.kind == "folder":
        return _json(Path(ref.value) / name)
    if ref.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        parts = ref.value.split("/")
        repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
        cached = try_to_load_from_cache(repo, f"{sub}/{name}" if sub else name)
        return _json(Path(cached)) if isinstance(cached, str) else None
    return None


def _shapes(ref: ModelRef, what: str) -> headers.Shapes:
    """A file model's tensor shapes; a file that is not safetensors is a 400 naming the field."""
    try:
        return headers.read_shapes(ref.value)
    except (OSError, headers.NotSafetensors) as exc:
        raise BadRequest(f"{ref.field}: '{shown(ref.value)}' cannot be read as a {what} ({exc}); give a "
                         ".safetensors file or a diffusers folder", field=ref.field, code="unrecognized_model") from None


def identify_base(ref: ModelRef) -> Identified:
    """The family of a base model (and its denoiser's text width) from its files, or ``Identified(None)``."""
    if ref.kind == "file":
        return headers.checkpoint_family(_shapes(ref, "checkpoint"))
    index = config_file(ref, "model_index.json")
    if index is None:
        return Identified(None)
    name = str(index.get("_class_name", ""))
    family = PIPELINE_CLASSES.get(name, name or None)
    denoiser = config_file(ref, "transformer/config.json" if family == "flux" else "unet/config.json") or {}
    width = denoiser.get("joint_attention_dim" if family == "flux" else "cross_attention_dim")
    return Identified(family, int(width) if isinstance(width, int) else None,
                      evidence=f"model_index.json: {name}")


def identify_controlnet(ref: ModelRef) -> Identified:
    """A ControlNet's family, text width and whether it is a union net, from its config or header."""
    if ref.kind == "file":
        return headers.controlnet_family(_shapes(ref, "ControlNet"))
    config = config_file(ref, "config.json")
    if config is None:
        return Identified(None)
    name = str(config.get("_class_name", ""))
    width = config.get("joint_attention_dim" if name.startswith("Flux") else "cross_attention_dim")
    width = int(width) if isinstance(width, int) else None
    if name == "ControlNetUnionModel":
        return Identified("sdxl", width, union=True, evidence="config.json: ControlNetUnionModel")
    if name == "FluxControlNetModel":
        union = config.get("num_mode") is not None
        return Identified("flux", width, union=union, evidence=f"config.json: FluxControlNetModel"
                                                               f"{' with num_mode' if union else ''}")
    if name == "ControlNetModel":
        family = "sdxl" if config.get("addition_embed_type") == "text_time" else "sd15"
        return Identified(family, width, evidence="config.json: ControlNetModel"
                          + (" with text_time embeddings" if family == "sdxl" else ""))
    return Identified(name or None, width, evidence=f"config.json: {name}")


def _wrong_family(field: str, value: str, what: str, found: Identified, fam: Family, fix: str) -> BadRequest:
    return BadRequest(
        f"{field}: '{shown(value)}' is {what} for {label(found.family)} ({found.evidence}), but models.family is "
        f"'{fam.name}' ({fam.label}); {fix}", field=field, code="incompatible_model")


# The cross-attention width of each family's denoiser, to name what another width was made for.
FAMILY_OF_WIDTH = {768: "SD 1.5", 1024: "SD 2.x", 2048: "SDXL", 4096: "Flux.1"}


def _width_mismatch(field: str, value: str, what: str, width: int, base_width: int, fam: Family,
                    fix: str) -> BadRequest:
    made_for = FAMILY_OF_WIDTH.get(width, "another model family")
    return BadRequest(
        f"{field}: '{shown(value)}' is {what} made for {made_for} (cross-attention width {width}), but the base model "
        f"is {fam.label} (width {base_width}); {fix}", field=field, code="incompatible_model")


def check_family(request: JobRequest, refs: dict[str, ModelRef | None], lora: ModelRef | None,
                 char_loras: dict[str, ModelRef | None], ip_weights: ModelRef | None) -> None:
    """Every model and feature of an image job against ``models.family``; a 400 naming the field and the fix.

    Runs at submit, before the job is queued: nothing has been loaded yet.
    """
    fam = FAMILIES[request.models.family]
    # 1. What the family cannot do at all: sizes, features, maps.
    check_features(request, fam)
    # 2. The base model is of the family (a single file's family can be told).
    base = refs["base"]
    assert base is not None
    base_width = check_base(base, fam)
    # 3. ControlNets: the union net, or one per map the frames carry.
    check_nets(request, refs, fam, base_width)
    # 4. LoRAs (the film's, the characters', a local draft LoRA) and the IP-Adapter.
    loras: list[tuple[str, ModelRef | None]] = [("", lora)]
    loras += [(f"Character '{name}': ", ref) for name, ref in char_loras.items()]
    if request.tier == "draft" and request.draft.lora and os.path.isfile(os.path.expanduser(request.draft.lora)):
        loras.append(("", ModelRef("file", os.path.expanduser(request.draft.lora), "draft.lora")))
    for who, ref in loras:
        if ref is not None and ref.kind == "file":
            try:
                check_lora(ref, fam, base_width)
            except BadRequest as exc:
                raise BadRequest(who + exc.message, field=exc.field, code=exc.code) from None
    if ip_weights is not None and ip_weights.kind == "file":
        found = headers.ip_adapter_family(_shapes(ip_weights, "IP-Adapter"))
        _check_found(ip_weights, "an IP-Adapter", found, fam, base_width,
                     f"use an IP-Adapter made for {fam.label} (models.ip_adapter, the add-on: Film Look)")


def check_features(request: JobRequest, fam: Family) -> None:
    """The size, features and maps of ``request`` that ``fam`` cannot take (``Family.why_not``)."""
    for name in ("width", "height"):
        value = getattr(request, name)
        if value % fam.side_multiple:
            lower = value - value % fam.side_multiple
            raise BadRequest(f"{name}: {fam.label} frames have sides that are multiples of {fam.side_multiple}, got "
                             f"{value}; use {lower or fam.side_multiple} or {lower + fam.side_multiple}",
                             field=name)
    refused = [
        ("regional_characters", bool(request.characters), "characters"),
        ("ip_adapter_masks", bool(request.models.ip_adapter and (request.style_reference or any(
            c.references for c in request.characters))), "models.ip_adapter"),
        ("draft", request.tier == "draft", "tier"),
        ("flow", request.coherence.mode == "FLOW", "coherence.mode"),
        ("flow", request.finalize is not None, "finalize"),
        ("prompt_travel", bool(request.prompt_keys), "prompt_keys"),
        ("lora", bool(request.models.lora), "models.lora"),
        ("union_controlnet", bool(request.models.controlnet_union), "models.controlnet_union"),
    ]
    for capability, asked, field in refused:
        if asked and not fam.supports(capability):  # type: ignore[arg-type]
            raise BadRequest(f"{field}: {fam.label} cannot do this: {fam.why_not[capability]}",  # type: ignore[index]
                             field=field, code="unsupported_by_family")
    for kind in used_maps(request):
        if kind not in fam.maps:
            i = next(i for i, f in enumerate(request.frames) if getattr(f, kind) is not None)
            raise BadRequest(f"frames[{i}].{kind}: {fam.label}'s union ControlNet has no {kind} mode (it takes "
                             f"{', '.join(fam.maps)}); send the shot without {kind} maps (the add-on: its {kind} "
                             "weight at 0)", field=f"frames[{i}].{kind}", code="unsupported_by_family")


def used_maps(request: JobRequest) -> tuple[str, ...]:
    """The maps some frame of the job runs with: depth and pose whenever sent, the others above weight 0."""
    from ..contract.schedule import job_extra_maps

    extra = job_extra_maps(request)
    return tuple(k for k in MAP_KINDS if k in extra or (k in ("depth", "pose") and any(
        getattr(f, k) is not None for f in request.frames)))


def check_base(ref: ModelRef, fam: Family) -> int | None:
    """The base model is one of ``fam``; returns its text width where its files tell it."""
    found = identify_base(ref)
    if ref.kind == "file" and found.family is None:
        raise BadRequest(
            f"models.base: cannot tell which model family the single file '{shown(ref.value)}' is: it has none of "
            "the keys of an SD 1.5 checkpoint (model.diffusion_model + cond_stage_model.transformer), an SDXL one "
            "(conditioner.embedders.1) or a Flux one (double_blocks). Give the model as a diffusers folder, or a "
            "single file in the original layout of SD 1.5 or SDXL", field="models.base", code="unrecognized_model")
    if found.family is not None and found.family not in FAMILIES:
        raise BadRequest(f"models.base: '{shown(ref.value)}' is {found.family} ({found.evidence}), a model family "
                         "this engine does not run; its families are SD 1.5 (sd15), SDXL (sdxl) and Flux.1 (flux)",
                         field="models.base", code="incompatible_model")
    if found.family is not None and found.family != fam.name:
        raise _wrong_family("models.base", ref.value, "a base model", found, fam,
                            f"send models.family '{found.family}' (the add-on: Film > Model Family), or pick a "
                            f"{fam.label} base model")
    if ref.kind == "file" and not fam.supports("single_file"):
        raise BadRequest(f"models.base: {fam.why_not['single_file']}", field="models.base",
                         code="unsupported_by_family")
    return found.width


def check_nets(request: JobRequest, refs: dict[str, ModelRef | None], fam: Family, base_width: int | None) -> None:
    """The union ControlNet is a union one of the family; each per-map net a plain one of the family."""
    union = refs.get("union")
    if union is not None:
        found = identify_controlnet(union)
        if found.family is not None and not found.union:
            raise BadRequest(
                f"models.controlnet_union: '{shown(union.value)}' is a plain ControlNet ({found.evidence}): it takes "
                "one kind of map, with no control modes. Give it as the map's own net "
                "(models.controlnet_depth, ...), or give a union ControlNet here"
                + (f", e.g. {fam.union_example}" if fam.union_example else ""), field=union.field,
                code="incompatible_model")
        _check_found(union, "a union ControlNet", found, fam, base_width,
                     f"use a {fam.label} union ControlNet" + (f", e.g. {fam.union_example}" if fam.union_example
                                                             else ""))
        return
    for kind in used_maps(request):
        ref = refs.get(kind)
        if ref is None:
            continue
        if not fam.supports("per_map_controlnets"):
            raise BadRequest(f"models.controlnet_union: {fam.why_not['per_map_controlnets']}; set it"
                             + (f", e.g. to {fam.union_example}" if fam.union_example else ""),
                             field="models.controlnet_union", code="unsupported_by_family")
        if fam.name != "sd15" and ref.kind == "hub" and ref.value in SD15_NET_IDS:
            raise BadRequest(
                f"{ref.field}: '{ref.value}' is an SD 1.5 ControlNet (the request's default), but models.family is "
                f"'{fam.name}'; set models.controlnet_union (e.g. {fam.union_example}), which serves every map, or a "
                f"{fam.label} {kind} ControlNet here", field=ref.field, code="incompatible_model")
        found = identify_controlnet(ref)
        if found.union:
            raise BadRequest(f"{ref.field}: '{shown(ref.value)}' is a union ControlNet ({found.evidence}); give it as "
                             "models.controlnet_union, where it serves every map in its control mode",
                             field=ref.field, code="incompatible_model")
        _check_found(ref, "a ControlNet", found, fam, base_width, f"use a {kind} ControlNet made for {fam.label}")


def check_lora(ref: ModelRef, fam: Family, base_width: int | None) -> None:
    """A LoRA file is of ``fam`` (its layout and cross-attention width)."""
    found = headers.lora_family(_shapes(ref, "LoRA"))
    _check_found(ref, "a LoRA", found, fam, base_width, f"use a LoRA made for {fam.label}")


def _check_found(ref: ModelRef, what: str, found: Identified, fam: Family, base_width: int | None, fix: str) -> None:
    if found.family is not None and found.family != fam.name:
        raise _wrong_family(ref.field, ref.value, what, found, fam, fix)
    if found.width is not None and base_width is not None and found.width != base_width:
        raise _width_mismatch(ref.field, ref.value, what, found.width, base_width, fam, fix)
    if found.family is None and found.candidates and fam.name not in found.candidates:
        raise BadRequest(f"{ref.field}: '{shown(ref.value)}' is {what} for {' or '.join(map(label, found.candidates))} "
                         f"({found.evidence}), but models.family is '{fam.name}' ({fam.label}); {fix}",
                         field=ref.field, code="incompatible_model")
