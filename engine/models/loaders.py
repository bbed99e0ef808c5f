"""Loading a job's models by their family (engine/models/families.py): base pipeline, ControlNets, LoRA.

One code path for tiny and real models. A single-file base model is built from its file and a config
folder (``single_file_config``: the request's ``models.base_config``, else the family's reference
repository in the Hugging Face cache), always with ``local_files_only=True``: loading a single file
never downloads. Worker thread, except ``single_file_config`` (HTTP thread, at submit).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..contract.errors import BadRequest, is_out_of_memory
from ..contract.schema import DEFAULT_BASE, ModelSpec
from .families import FAMILIES, Family, label
from .refs import ModelRef, Progress, load_with_fallback, resolve_ref, shown

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# Where a single-file base finds its configs and tokenizers when the request names none: the family's
# reference repository, from the Hugging Face cache only (diffusers' own default for these checkpoints).
REFERENCE_REPOS = {"sd15": DEFAULT_BASE, "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}


def single_file_config(base: ModelRef, spec: ModelSpec) -> ModelRef:
    """``base`` with the config folder that builds it (a single file), or ``base`` itself. HTTP thread.

    Raises a 400 naming ``models.base_config`` (or ``models.base``) and the command that fetches a config
    when there is none: the engine never downloads one at load time.
    """
    if base.kind != "file":
        return base
    if spec.base_config:
        given = resolve_ref(spec.base_config, "models.base_config", "base")
        folder = given.value if given.kind == "folder" else _cached_snapshot(given.value)
        if folder is None:
            raise BadRequest(f"models.base_config: '{shown(given.value)}' is not in the Hugging Face cache and the "
                             f"engine does not download configs; run `hf download {given.value} --include '*.json' "
                             "'*.txt'` on the engine machine, or give a local diffusers folder",
                             field="models.base_config", code="model_unavailable")
        return _with_config(base, folder, given.identity())
    repo = REFERENCE_REPOS.get(spec.family)
    folder = _cached_snapshot(repo) if repo else None
    if folder is None:
        raise BadRequest(
            f"models.base: the single file '{shown(base.value)}' needs a {label(spec.family)} config (model_index.json, "
            "the component configs and tokenizers) and none is on the engine machine: set models.base_config to a "
            f"diffusers folder of the same family (the add-on: Film > Base Config), or run `hf download {repo} "
            "--include '*.json' '*.txt'` there once", field="models.base", code="model_unavailable")
    return _with_config(base, folder, "")


def _with_config(base: ModelRef, folder: str, print_: str) -> ModelRef:
    from dataclasses import replace

    return replace(base, config=str(Path(folder).resolve()), config_print=print_)


def _cached_snapshot(repo: str) -> str | None:
    """The cached snapshot folder of Hub repository ``repo`` holding a model_index.json, or None (no download)."""
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(repo, "model_index.json")
    return str(Path(index).parent) if isinstance(index, str) else None


def base_family(ref: ModelRef, progress: Progress) -> str:
    """The family a base model is, from its model_index.json or its single file's keys (at load time)."""
    from .checks import PIPELINE_CLASSES
    from .headers import checkpoint_family, read_shapes

    if ref.kind == "file":
        found = checkpoint_family(read_shapes(ref.value)).family
        return found or "unknown"
    from diffusers import DiffusionPipeline

    config = load_with_fallback(
        ref, lambda offline: DiffusionPipeline.load_config(ref.value, local_files_only=offline), progress)
    name = str(config.get("_class_name", ""))
    return PIPELINE_CLASSES.get(name, name or "unknown")


def _pipeline_options(fam: Family) -> dict[str, Any]:
    # No safety checker: previs frames are for the director, and the checker both blacks out frames
    # at random on blocking shots and costs a second model load. No SDXL watermark either: it would
    # make a frame depend on whether invisible-watermark happens to be installed.
    if fam.name == "sd15":
        return {"safety_checker": None, "requires_safety_checker": False}
    return {"add_watermarker": False} if fam.name == "sdxl" else {}


def load_base(ref: ModelRef, dtype: torch.dtype, progress: Progress, family: str | None = None) -> tuple[Any, str]:
    """The base text-to-image pipeline of ``family`` (None: whichever the model is); returns (pipe, family)."""
    import diffusers

    found = base_family(ref, progress)
    if family is not None and found != family:
        raise BadRequest(f"models.base: '{shown(ref.value)}' is a {label(found)} model, but models.family is "
                         f"'{family}'; send models.family '{found}', or pick a {label(family)} base model",
                         field="models.base", code="incompatible_model")
    if found not in FAMILIES:
        raise BadRequest(f"models.base: '{shown(ref.value)}' is not an SD 1.5, SDXL or Flux.1 model ({found})",
                         field="models.base", code="incompatible_model")
    fam = FAMILIES[found]
    cls = getattr(diffusers, fam.base_pipeline)
    extra = _pipeline_options(fam)
    progress("loading", {"model": ref.value})
    if ref.kind == "file":
        config = {"config": ref.config} if ref.config else {}
        pipe = load_with_fallback(ref, lambda offline: cls.from_single_file(
            ref.value, dtype=dtype, local_files_only=True, **config, **extra), progress)
    else:
        pipe = load_with_fallback(ref, lambda offline: cls.from_pretrained(
            ref.value, dtype=dtype, use_safetensors=True, local_files_only=offline, **extra), progress)
    return pipe, found


def denoiser(pipe: Any) -> Any:
    """The network that denoises: the UNet (SD 1.5, SDXL) or the transformer (Flux)."""
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def text_width(pipe: Any) -> int:
    """The width of the text embeddings the denoiser attends to (ControlNets must match it)."""
    config = denoiser(pipe).config
    return int(config.cross_attention_dim if "cross_attention_dim" in config else config.joint_attention_dim)


def load_controlnet(ref: ModelRef, dtype: torch.dtype, cross_attention_dim: int, progress: Progress) -> Any:
    """Load one per-map ControlNet and check it fits the base UNet."""
    from diffusers import ControlNetModel

    progress("loading", {"model": ref.value})
    if ref.kind == "file":
        net = load_with_fallback(
            ref, lambda offline: ControlNetModel.from_single_file(ref.value, dtype=dtype,
                                                                  local_files_only=True), progress)
    else:
        net = load_with_fallback(
            ref, lambda offline: ControlNetModel.from_pretrained(
                ref.value, dtype=dtype, use_safetensors=True, local_files_only=offline), progress)
    _check_width(ref, net.config.cross_attention_dim, cross_attention_dim)
    return net


def load_union(ref: ModelRef, fam: Family, dtype: torch.dtype, width: int, progress: Progress) -> Any:
    """The family's union ControlNet (``Family.union_net``) from a folder, a Hub id, or a file beside its
    config.json (xinsir ships the promax weights as a second file in the folder)."""
    import diffusers

    cls = getattr(diffusers, fam.union_net)
    progress("loading", {"model": ref.value})
    if ref.kind == "file":
        net = load_with_fallback(ref, lambda offline: _from_file(cls, Path(ref.value), dtype), progress)
    else:
        net = load_with_fallback(ref, lambda offline: cls.from_pretrained(
            ref.value, dtype=dtype, use_safetensors=True, local_files_only=offline), progress)
    config = net.config
    _check_width(ref, int(config.get("cross_attention_dim") or config.get("joint_attention_dim")), width)
    return net


def _from_file(cls: Any, path: Path, dtype: Any) -> Any:
    from safetensors.torch import load_file

    net = cls.from_config(cls.load_config(str(path.parent), local_files_only=True))
    net.load_state_dict(load_file(str(path)), strict=True)
    return net.to(dtype=dtype)


def _check_width(ref: ModelRef, net_width: int, width: int) -> None:
    if net_width != width:
        raise BadRequest(
            f"{ref.field}: ControlNet '{shown(ref.value)}' was trained for a base model whose text width is {net_width}, "
            f"but the base model's is {width} (SD 1.5 is 768, SDXL 2048, Flux 4096). Pick a ControlNet made for the "
            "base model's family.", field=ref.field, code="incompatible_model")


def load_lora(pipe: Any, ref: ModelRef, scale: float) -> None:
    """Fuse a LoRA into ``pipe`` at ``scale``. The pipeline key includes the LoRA, so a
    fused pipeline is never reused for a request with another LoRA."""
    try:
        pipe.load_lora_weights(ref.value, adapter_name="viewfinder")
        pipe.fuse_lora(lora_scale=scale, adapter_names=["viewfinder"])
        # Keep the fused weights, drop the adapter layers: character LoRAs (engine/characters/identity.py)
        # are mixed per job with set_adapters, which would otherwise unmerge this one.
        pipe.unload_lora_weights()
    except Exception as exc:  # noqa: BLE001
        if is_out_of_memory(exc):
            raise
        raise BadRequest(
            f"{ref.field}: could not apply LoRA '{ref.value}' ({str(exc).splitlines()[0][:200]}). "
            "Check that it was trained for this base model's family.", field=ref.field,
            code="incompatible_model",
        ) from exc


def union_file_config(ref: ModelRef) -> None:
    """A union ControlNet given as a file needs its config.json beside it; a 400 naming the field otherwise."""
    if ref.kind == "file" and not os.path.isfile(os.path.join(os.path.dirname(ref.value), "config.json")):
        raise BadRequest(f"{ref.field}: a union ControlNet file needs the config.json of its repository in the same "
                         f"folder (as xinsir/controlnet-union-sdxl-1.0 ships its promax file); give the folder, or put "
                         "config.json beside the file", field=ref.field, code="model_unavailable")
