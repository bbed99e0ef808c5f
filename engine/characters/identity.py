"""A job's identity conditioning: set up once per job, applied per batch (engine/IDENTITY.md).

``IdentityPlan.prepare`` runs once per job on the worker: it loads the IP-Adapter (once per
pipeline), encodes every reference image of the job in one image-encoder call, loads the
characters' LoRAs as named adapters and reads the palette. ``IdentityPlan.batch`` gives the
pipeline arguments and the processor context for one batch of frames, with only the
characters visible in those frames: a batch where nobody is visible and no style reference
is set runs the plain pipeline, at no extra cost.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..coherence.strategies import ColorStats, color_stats
from ..contract.errors import BadRequest, EngineFault, is_out_of_memory
from ..contract.schema import JobRequest
from ..models.families import FAMILIES
from ..models.refs import ModelRef, Progress
from ..storage import Storage
from .inputs import FrameRegions, read_image
from .ip_adapter import IpAdapter, IpAdapterRef, load_ip_adapter, reference_embeds
from .regional import IpSlot, RegionState, installed, regional_embeds

logger = logging.getLogger(__name__)


@dataclass
class IdentityPlan:
    request: JobRequest
    loras: dict[str, ModelRef | None]
    ip_ref: IpAdapterRef | None
    ip: IpAdapter | None = None
    embeds: Any = None  # (2, slots, ...) negative first
    slot_of: dict[int, int] = field(default_factory=dict)  # character index -> slot
    style_slot: int | None = None
    palette: ColorStats | None = None
    adapters: list[str] = field(default_factory=list)
    # Adapters of the job that stay active beside the characters' (the draft tier's LoRA, engine/models/draft.py).
    keep_adapters: list[tuple[str, float]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=lambda: {"embeddings_computed": 0, "images_encoded": 0,
                                                           "regional_batches": 0, "plain_batches": 0})

    @property
    def active(self) -> bool:
        return bool(self.request.characters) or self.style_slot is not None

    # Once per job ----------------------------------------------------------------------

    def prepare(self, models: Any, storage: Storage, progress: Progress) -> None:
        """Load what the job needs and encode its references once. Worker thread."""
        request = self.request
        base, device = models.base, models.key.device
        family = FAMILIES[models.family]
        if request.characters and not family.supports("regional_characters"):  # refused at submit already
            raise BadRequest(f"characters: {family.label} cannot do this: {family.why_not['regional_characters']}",
                             field="characters", code="unsupported_by_family")
        # 1. Palette: the colour anchor of every frame of the film.
        if request.palette_reference:
            self.palette = color_stats(np.asarray(read_image(storage, request.palette_reference)))
        # 2. IP-Adapter references: one slot per character with references, one for the style.
        groups: list[list[Any]] = []
        if self.ip_ref is not None:
            for k, character in enumerate(request.characters):
                if character.references and character.identity_strength > 0:
                    self.slot_of[k] = len(groups)
                    groups.append([read_image(storage, sha) for sha in character.references])
            if request.style_reference and request.style_strength > 0:
                self.style_slot = len(groups)
                groups.append([read_image(storage, request.style_reference)])
        if groups:
            assert self.ip_ref is not None
            cache = models.ip_adapters
            if self.ip_ref.identity() not in cache:
                cache[self.ip_ref.identity()] = load_ip_adapter(base, self.ip_ref, device, progress)
            self.ip = cache[self.ip_ref.identity()]
            self.embeds = reference_embeds(base, self.ip, groups, base._execution_device)
            self.stats["embeddings_computed"] += 1
            self.stats["images_encoded"] += sum(len(g) for g in groups)
        # 3. Character LoRAs as named adapters, mixed for this job only (see release()).
        wanted: list[tuple[str, float]] = []
        for i, character in enumerate(request.characters):
            ref = self.loras.get(character.name)
            if ref is None:
                continue
            name = "vf_char_" + hashlib.sha256(ref.identity().encode()).hexdigest()[:12]
            if name not in self.adapters:
                _load_character_lora(base, models.family, ref, name, character.name, f"characters[{i}].lora")
                self.adapters.append(name)
            wanted.append((name, character.lora_scale))
        if wanted:
            wanted += self.keep_adapters
            base.set_adapters([n for n, _ in wanted], [s for _, s in wanted])

    def release(self, models: Any) -> None:
        """Remove this job's LoRA adapters: the next job runs the pipeline as loaded."""
        if self.adapters:
            models.base.delete_adapters(self.adapters)
            self.adapters = []

    # Per batch -----------------------------------------------------------------------

    def batch(self, models: Any, regions: Sequence[FrameRegions | None], prompt: str, negative: str,
              guidance_scale: float) -> tuple[dict[str, Any], contextlib.AbstractContextManager[Any]]:
        """Pipeline keyword arguments and the processor context for one batch of frames."""
        request = self.request
        visible = sorted({k for r in regions if r is not None for k in r.visible})
        if not visible and self.style_slot is None:
            self.stats["plain_batches"] += 1
            return {}, contextlib.nullcontext()
        self.stats["regional_batches"] += 1
        base = models.base
        n = len(regions)
        height, width = request.height, request.width
        # 1. Owner maps renumbered to the visible characters (1..len(visible)).
        lut = np.zeros(256, np.uint8)
        for position, k in enumerate(visible):
            lut[k + 1] = position + 1
        owners = np.stack([lut[r.owner] if r is not None else np.zeros((height, width), np.uint8)
                           for r in regions])
        # 2. Text blocks: the shot prompt, then one per visible character.
        kwargs: dict[str, Any] = {}
        blocks = [request.characters[k].region_prompt() or prompt for k in visible]
        device = base._execution_device
        if blocks:
            kwargs.update(regional_embeds(base, prompt, negative, blocks, n, device))
        # 3. IP-Adapter slots of the visible characters and the style.
        slots: list[IpSlot] = []
        indices: list[int] = []
        for position, k in enumerate(visible):
            if k in self.slot_of:
                slots.append(IpSlot(request.characters[k].identity_strength, position + 1))
                indices.append(self.slot_of[k])
        if self.style_slot is not None:
            slots.append(IpSlot(request.style_strength, None, style_only=True))
            indices.append(self.style_slot)
        ip = None
        if slots:
            embeds = self.embeds[:, indices]
            if guidance_scale <= 1.0:
                embeds = embeds[1:]
            kwargs["ip_adapter_image_embeds"] = [embeds]
            ip = self.ip
        vae_scale = getattr(base, "vae_scale_factor", 8)
        state = RegionState(owners=owners, blocks=len(blocks), block_len=77 if not blocks else
                            kwargs["prompt_embeds"].shape[1] // (len(blocks) + 1),
                            latent_hw=(height // vae_scale, width // vae_scale), slots=slots)
        return kwargs, installed(base.unet, list(models.nets.values()), state, ip)

    def finish(self, image: np.ndarray) -> np.ndarray:
        """Colour held to the film's palette reference (per-channel mean/std), when one is set."""
        from ..coherence.strategies import match_color

        return match_color(image, self.palette) if self.palette is not None else image


def _load_character_lora(base: Any, family: str, ref: ModelRef, name: str, who: str, field_name: str) -> None:
    """Load a character's LoRA as adapter ``name``; another family's LoRA is a 400 naming the character."""
    load_lora_adapter(base, family, ref, name, f"Character '{who}': LoRA", field_name)


# Cross-attention width of the UNet families, to name a LoRA's family in messages.
FAMILY_OF_WIDTH = {768: "SD 1.5", 1024: "SD 2.x", 2048: "SDXL"}


def lora_cross_width(keys_shapes: dict[str, tuple[int, ...]]) -> int | None:
    """The text width a LoRA's cross-attention key projection was trained for, from its tensor shapes.

    Reads diffusers/peft (``attn2.to_k.lora_A``, ``attn2.to_k.lora.down``) and kohya
    (``attn2_to_k.lora_down``) layouts; None when the LoRA has no such layer.
    """
    import re

    pattern = re.compile(r"attn2[._]to_k[._](lora_A|lora_down|lora\.down)\.weight$")
    for key, shape in keys_shapes.items():
        if pattern.search(key) and len(shape) == 2:
            return int(shape[1])
    return None


def load_lora_adapter(base: Any, family: str, ref: ModelRef, name: str, label: str, field_name: str) -> None:
    """Load a LoRA file as the named adapter ``name`` (not fused: ``delete_adapters`` restores the UNet exactly).

    A LoRA made for another model family (SDXL on SD 1.5, or the reverse) is a 400 whose message starts
    with ``label`` and names both families; so is one whose layers match nothing in the UNet.
    """
    from safetensors import safe_open

    with safe_open(ref.value, framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    keys = list(shapes)
    base_label = {"sd15": "SD 1.5", "sdxl": "SDXL"}.get(family, family)
    sdxl_keys = any("text_encoder_2" in k or k.startswith("lora_te2_") for k in keys)
    if (family == "sd15" and sdxl_keys):
        raise BadRequest(f"{label} '{ref.value}' was trained for SDXL but the base model is SD 1.5; "
                         "use a LoRA made for the base model's family, or change the base model",
                         field=field_name, code="incompatible_model")
    width, unet_width = lora_cross_width(shapes), int(base.unet.config.cross_attention_dim)
    if width is not None and width != unet_width:
        made_for = FAMILY_OF_WIDTH.get(width, "another model family")
        raise BadRequest(f"{label} '{ref.value}' was made for {made_for} (cross-attention width {width}), but the "
                         f"base model is {base_label} (width {unet_width}); use a LoRA made for the base model's "
                         f"family ({base_label}), or change the base model", field=field_name,
                         code="incompatible_model")
    try:
        base.load_lora_weights(ref.value, adapter_name=name)
    except Exception as exc:  # noqa: BLE001 - reported to the user as a bad LoRA
        if is_out_of_memory(exc) or isinstance(exc, EngineFault):
            raise
        with contextlib.suppress(Exception):
            base.delete_adapters([name])
        raise BadRequest(
            f"{label} '{ref.value}': could not apply it ({str(exc).splitlines()[0][:200]}). It was "
            f"probably trained for another model family than the base model ({family}); use a LoRA made for it.",
            field=field_name, code="incompatible_model",
        ) from exc
    if name not in (getattr(base.unet, "peft_config", None) or {}):
        with contextlib.suppress(Exception):
            base.delete_adapters([name])
        raise BadRequest(f"{label} '{ref.value}': none of its layers match the base model's UNet ({base_label}); "
                         "use a LoRA made for this model family", field=field_name, code="incompatible_model")
