"""IP-Adapter and image encoder: resolved at submit, loaded once per pipeline, embeddings once per job.

An IP-Adapter is a ``.safetensors`` file (local, or ``<owner>/<repo>/<path>.safetensors`` on the
Hub); pickles are refused like every other model (engine/models/refs.py). Its image encoder is a
CLIP vision folder (local, or ``<owner>/<repo>[/<subfolder>]``); when none is given the engine
looks next to the IP-Adapter (``image-encoder``/``image_encoder``, the h94 layout).
diffusers' ``load_ip_adapter`` reads the weights; the engine then takes the adapter's image
projection and per-layer ``to_k_ip``/``to_v_ip`` out of the UNet again, so jobs without
references run the stock UNet, and ``engine/characters/regional.py`` puts them back for a call.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contract.errors import BadRequest, EngineFault, is_out_of_memory
from ..models.refs import PICKLE_SUFFIXES, ModelRef, Progress, fingerprint, load_with_fallback

logger = logging.getLogger(__name__)

ENCODER_FOLDERS = ("image-encoder", "image_encoder")


@dataclass(frozen=True)
class IpAdapterRef:
    weights: ModelRef  # file: value is the path; hub: value is "<owner>/<repo>/<path>.safetensors"
    encoder: ModelRef  # folder, or hub "<owner>/<repo>[/<subfolder>]"

    def identity(self) -> str:
        return f"{self.weights.identity()}|{self.encoder.identity()}"


def _hub_split(value: str) -> tuple[str, str, str]:
    """'owner/repo/a/b/file' -> ('owner/repo', 'a/b', 'file')."""
    parts = value.strip("/").split("/")
    return "/".join(parts[:2]), "/".join(parts[2:-1]), parts[-1]


def resolve_ip_adapter(value: str, encoder: str | None) -> IpAdapterRef:
    """Classify the IP-Adapter and encoder references; 400 naming ``models.ip_adapter``/``models.image_encoder``."""
    from ..models.refs import check_allowed, not_usable

    check_allowed(value, "models.ip_adapter")
    if encoder and encoder.strip():
        check_allowed(encoder, "models.image_encoder")
    text = value.strip()
    path = Path(os.path.expanduser(text))
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise BadRequest(
            f"models.ip_adapter: '{value}' is a pickle-based {path.suffix} file, which the engine refuses to load "
            "because unpickling can run code hidden in the file. Use the .safetensors version (h94/IP-Adapter has "
            "one for every adapter).", field="models.ip_adapter", code="unsafe_model_format",
        )
    if path.suffix.lower() != ".safetensors":
        raise BadRequest(f"models.ip_adapter: '{value}' must be a .safetensors file (local, or "
                         "'<owner>/<repo>/<path>.safetensors' on the Hub)", field="models.ip_adapter")
    if path.is_file():
        weights = ModelRef("file", str(path.resolve()), "models.ip_adapter", fingerprint(path))
        default_encoder = next((str(path.parent / n) for n in ENCODER_FOLDERS if (path.parent / n).is_dir()), None)
    elif path.is_absolute() or text.startswith((".", "~")) or text.count("/") < 2:
        raise not_usable(value, "models.ip_adapter")  # the same words whatever is on the disk
    else:
        weights = ModelRef("hub", text, "models.ip_adapter")
        repo, sub, _ = _hub_split(text)
        default_encoder = f"{repo}/{sub}/image_encoder" if sub else f"{repo}/image_encoder"
    chosen = (encoder or "").strip() or default_encoder
    if not chosen:
        raise BadRequest("models.image_encoder: no image encoder given and none next to the IP-Adapter; give the "
                         "CLIP vision encoder folder the IP-Adapter was trained with", field="models.image_encoder")
    enc_path = Path(os.path.expanduser(chosen))
    if enc_path.is_dir() and (enc_path / "config.json").is_file():
        enc = ModelRef("folder", str(enc_path.resolve()), "models.image_encoder", fingerprint(enc_path))
    elif enc_path.exists() or enc_path.is_absolute() or chosen.startswith((".", "~")) or chosen.count("/") < 1:
        raise not_usable(chosen, "models.image_encoder")  # the same words whatever is on the disk
    else:
        enc = ModelRef("hub", chosen, "models.image_encoder")
    return IpAdapterRef(weights, enc)


def load_image_encoder(ref: ModelRef, dtype: Any, progress: Progress) -> Any:
    """A CLIP vision encoder with projection (safetensors only); also used by the identity metric."""
    from transformers import CLIPVisionModelWithProjection

    if ref.kind == "hub":
        parts = ref.value.split("/")
        repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    else:
        repo, sub = ref.value, ""
    progress("loading", {"model": ref.value})
    return load_with_fallback(ref, lambda offline: CLIPVisionModelWithProjection.from_pretrained(
        repo, subfolder=sub or "", dtype=dtype, use_safetensors=True, local_files_only=offline), progress)


@dataclass
class IpAdapter:
    """The adapter's modules, held outside the UNet between calls."""

    projection: Any  # diffusers MultiIPAdapterImageProjection
    layers: dict[str, Any] = field(default_factory=dict)  # attn2 processor name -> IPAdapterAttnProcessor

    def attach(self, unet: Any) -> None:
        unet.encoder_hid_proj = self.projection
        unet.config.encoder_hid_dim_type = "ip_image_proj"

    def detach(self, unet: Any) -> None:
        unet.encoder_hid_proj = None
        unet.config.encoder_hid_dim_type = None


def load_ip_adapter(base: Any, ref: IpAdapterRef, device: str, progress: Progress) -> IpAdapter:
    """Load the encoder and the adapter into ``base``, then take the adapter out of the UNet. Worker thread."""
    from transformers import CLIPImageProcessor

    # 1. The image encoder, registered on the base pipeline for prepare_ip_adapter_image_embeds.
    encoder = load_image_encoder(ref.encoder, base.unet.dtype, progress).to(device)
    size = encoder.config.image_size
    base.register_modules(image_encoder=encoder, feature_extractor=CLIPImageProcessor(size=size, crop_size=size))
    # 2. The adapter through diffusers' own loader (safetensors branch).
    saved = base.unet.attn_processors
    if ref.weights.kind == "file":
        where, sub, name = str(Path(ref.weights.value).parent), "", Path(ref.weights.value).name
    else:
        where, sub, name = _hub_split(ref.weights.value)
    progress("loading", {"model": ref.weights.value})
    try:
        load_with_fallback(ref.weights, lambda offline: base.load_ip_adapter(
            where, subfolder=sub, weight_name=name, image_encoder_folder=None, local_files_only=offline), progress)
    except Exception as exc:  # noqa: BLE001
        if is_out_of_memory(exc) or isinstance(exc, EngineFault):
            raise
        raise BadRequest(f"models.ip_adapter: could not load '{ref.weights.value}' "
                         f"({str(exc).splitlines()[0][:200]}); check that it is an IP-Adapter for this base "
                         "model's family", field="models.ip_adapter", code="incompatible_model") from exc
    unet = base.unet
    adapter = IpAdapter(unet.encoder_hid_proj.to(device),
                        {n: p.to(device) for n, p in unet.attn_processors.items() if hasattr(p, "to_k_ip")})
    # 3. Back to the stock UNet until a job with references runs.
    adapter.detach(unet)
    unet.set_attn_processor(saved)
    return adapter


def reference_embeds(base: Any, adapter: IpAdapter, groups: list[list[Any]], device: str) -> Any:
    """One embedding slot per group of images (their mean), negative first: (2, slots, ...).

    Runs the image encoder once for all images of the job.
    """
    import torch

    images = [image for group in groups for image in group]
    adapter.attach(base.unet)
    try:
        with torch.no_grad():
            (embeds,) = base.prepare_ip_adapter_image_embeds([images], None, device, 1, True)
    finally:
        adapter.detach(base.unet)
    slots, start = [], 0
    for group in groups:
        slots.append(embeds[:, start:start + len(group)].mean(dim=1, keepdim=True))
        start += len(group)
    return torch.cat(slots, dim=1)
