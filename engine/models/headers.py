"""What a weight file is, told from its safetensors header: tensor names and shapes, no weights read.

A safetensors file starts with an 8-byte length and a JSON table of every tensor's name, dtype and
shape. That is enough to tell a model's family (SDXL has a second text encoder and a "label_emb"
for its size conditioning, Flux has double/single transformer blocks), whether a ControlNet is a
union one (it has control-mode embeddings), and the width of the text a LoRA, ControlNet or
IP-Adapter attends to. Read on the HTTP thread at submit, so a model from another family is refused
before anything is loaded (``engine/models/checks.py``). Plain Python: no torch, no safetensors.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

# The largest header read: a full SDXL single file's header is about 200 KB; anything past this is not
# a model a user meant (and would cost memory to parse).
MAX_HEADER_BYTES = 64 * 1024 * 1024

Shapes = dict[str, tuple[int, ...]]


class NotSafetensors(ValueError):
    """The file is not a readable safetensors file."""


def read_shapes(path: str | Path) -> Shapes:
    """Every tensor's name and shape in the safetensors file at ``path``."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise NotSafetensors(f"{Path(path).name} is shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if not 2 <= length <= MAX_HEADER_BYTES:
            raise NotSafetensors(f"{Path(path).name} has no safetensors header (length {length})")
        try:
            table = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError) as exc:
            raise NotSafetensors(f"{Path(path).name}: its safetensors header is not JSON ({exc})") from exc
    if not isinstance(table, dict):
        raise NotSafetensors(f"{Path(path).name}: its safetensors header is not a table")
    return {name: tuple(int(n) for n in entry.get("shape", ())) for name, entry in table.items()
            if name != "__metadata__" and isinstance(entry, dict)}


@dataclass(frozen=True)
class Identified:
    """What a weight file (or folder) was found to be. ``family`` None: it could not be told.

    ``width``: the text-embedding width its cross-attention (or joint attention) reads, when it has one;
    ``union``: a ControlNet with control modes; ``evidence``: the key or config entry that told, for messages.
    """

    family: str | None
    width: int | None = None
    union: bool = False
    evidence: str = ""
    # When ``family`` is None but the layout narrows it down (a UNet LoRA is SD 1.5 or SDXL, never Flux).
    candidates: tuple[str, ...] = ()


_TO_K = re.compile(r"attn2[._]to_k(?:\.weight|[._](?:lora_A|lora_down|lora\.down)\.weight)$")


def cross_width(shapes: Shapes) -> int | None:
    """The text width of the first cross-attention key projection (UNet, ControlNet, LoRA of either)."""
    for name, shape in shapes.items():
        if _TO_K.search(name) and len(shape) == 2:
            return int(shape[1])
    return None


def _first(shapes: Shapes, *prefixes: str) -> str | None:
    return next((k for k in shapes if k.startswith(prefixes)), None)


def checkpoint_family(shapes: Shapes) -> Identified:
    """A base model single file in the original (LDM / BFL) layout, or a diffusers-layout Flux transformer."""
    unet = {k: s for k, s in shapes.items() if k.startswith("model.diffusion_model.")}
    if key := _first(shapes, "conditioner.embedders.1.model.", "model.diffusion_model.label_emb."):
        return Identified("sdxl", cross_width(unet), evidence=key)
    if key := _first(shapes, "double_blocks.", "model.diffusion_model.double_blocks."):
        return Identified("flux", evidence=key)
    if key := _first(shapes, "cond_stage_model.model."):
        return Identified("sd2", cross_width(unet), evidence=key)  # OpenCLIP-H: SD 2.x
    if unet and (key := _first(shapes, "cond_stage_model.transformer.")):
        return Identified("sd15", cross_width(unet), evidence=key)
    return Identified(None)


def controlnet_family(shapes: Shapes) -> Identified:
    """A ControlNet's weights: diffusers layout (``controlnet_down_blocks``) or the original (``control_model.``)."""
    union = _first(shapes, "task_embedding", "control_add_embedding.", "controlnet_mode_embedder.")
    if key := _first(shapes, "controlnet_blocks.", "controlnet_single_blocks.", "controlnet_x_embedder."):
        width = shapes.get("context_embedder.weight", (0, 0))
        return Identified("flux", int(width[1]) if len(width) == 2 and width[1] else None,
                          union="controlnet_mode_embedder.weight" in shapes, evidence=union or key)
    width = cross_width(shapes)
    if key := _first(shapes, "add_embedding.", "control_model.label_emb."):
        return Identified("sdxl", width, union=union is not None, evidence=union or key)
    if key := _first(shapes, "controlnet_down_blocks.", "control_model.input_blocks."):
        return Identified("sd15", width, union=union is not None, evidence=union or key)
    return Identified(None, width, union=union is not None, evidence=union or "")


def lora_family(shapes: Shapes) -> Identified:
    """A LoRA's family from its layout: kohya (``lora_unet_``/``lora_te*_``) or diffusers/peft (``unet.``...).

    Kohya writes SD 1.5 UNet layers by their diffusers names and SDXL's by the original (sgm) ones
    (``input_blocks``); SDXL has a second text encoder (``lora_te2_``, ``text_encoder_2.``). The
    cross-attention width settles the rest (768 SD 1.5, 2048 SDXL, any width for tiny models).
    """
    width = cross_width(shapes)
    if key := _first(shapes, "lora_unet_double_blocks_", "lora_unet_single_blocks_", "transformer.",
                     "diffusion_model.double_blocks.", "lora_transformer_"):
        return Identified("flux", evidence=key)
    if key := _first(shapes, "lora_te2_", "text_encoder_2.", "lora_unet_input_blocks_", "lora_unet_output_blocks_",
                     "lora_unet_middle_block_"):
        return Identified("sdxl", width, evidence=key)
    if key := _first(shapes, "lora_te_", "lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_unet_mid_block_",
                     "unet.", "text_encoder."):
        # The width tells the rest: compared with the base model's when that is known (checks.py), else named.
        guess = {768: "sd15", 2048: "sdxl"}.get(width or 0)
        return Identified(None, width, evidence=f"its cross-attention width {width}" if guess else key,
                          candidates=(guess,) if guess else ("sd15", "sdxl"))
    return Identified(None, width)


def ip_adapter_family(shapes: Shapes) -> Identified:
    """An IP-Adapter (h94 layout): the width its ``to_k_ip`` layers read is the UNet's text width."""
    for name, shape in shapes.items():
        if name.startswith("ip_adapter.") and name.endswith("to_k_ip.weight") and len(shape) == 2:
            width = int(shape[1])
            return Identified({768: "sd15", 2048: "sdxl"}.get(width), width, evidence=name)
    if key := _first(shapes, "double_blocks.", "ip_adapter_proj_model."):
        return Identified("flux", evidence=key)
    return Identified(None)
