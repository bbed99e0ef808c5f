"""Identity metric: does a character look the same in every shot? (issue 9, engine/IDENTITY.md)

For each character, its crops are cut from the frames of every take by the exact box of its
pixels in the shot's id masks (``<shot>/conditioning/masks/NNNN.png``; the ids come from
take.json ``characters: [{"name", "mask_ids", "armature"}]``, or, for takes made without the
bible, from the mask legend's ``kind: "character"`` entries in conditioning/meta.json, matched
by the rig's name). Each crop is embedded by a CLIP vision encoder (stated in the output: by
default the IP-Adapter's image encoder of the take's settings, or ``--identity-encoder``),
and the figure is the mean cosine similarity over all pairs of crops from DIFFERENT shots:
1.0 = the same embedding everywhere. Up to ``max_crops`` frames per take, evenly spaced.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .take import frame_numbers

logger = logging.getLogger(__name__)

MIN_CROP_PIXELS = 16  # a character smaller than this in a frame gives no crop


@dataclass
class CharacterCrops:
    name: str
    shots: dict[str, list[np.ndarray]] = field(default_factory=dict)  # shot -> RGB crops

    def count(self) -> int:
        return sum(len(c) for c in self.shots.values())


def take_characters(take_dir: Path, meta: dict[str, Any]) -> list[tuple[str, str, list[int]]]:
    """(key, label, mask ids) per character of a take: take.json first, else the mask legend."""
    info_path = take_dir / "take.json"
    info = json.loads(info_path.read_text("utf-8")) if info_path.is_file() else {}
    found = []
    for entry in info.get("characters") or []:
        key = entry.get("armature") or entry["name"]
        found.append((key, entry["name"], [int(i) for i in entry.get("mask_ids", [])]))
    if found:
        return found
    legend = (meta.get("masks") or {}).get("legend") or {}
    for mask_id, entry in legend.items():
        if entry.get("kind") == "character":
            found.append((entry.get("name", mask_id), entry.get("name", mask_id), [int(mask_id)]))
    return found


def any_characters(takes: list[Path]) -> bool:
    """True when some take names characters (take.json or the mask legend): then there is a figure to print."""
    for take in takes:
        meta_path = take.parent.parent / "conditioning" / "meta.json"
        meta = json.loads(meta_path.read_text("utf-8")) if meta_path.is_file() else {}
        if take_characters(take, meta):
            return True
    return False


def crop_box(mask: np.ndarray, ids: list[int]) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the pixels with ``ids``; None when fewer than MIN_CROP_PIXELS."""
    inside = np.isin(mask, np.asarray(ids, mask.dtype))
    if inside.sum() < MIN_CROP_PIXELS:
        return None
    rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def collect_crops(takes: list[Path], max_crops: int = 8) -> dict[str, CharacterCrops]:
    """Crops per character and shot from the take folders (``<shot>/takes/NNN``)."""
    from PIL import Image

    out: dict[str, CharacterCrops] = {}
    for take in takes:
        cond = take.parent.parent / "conditioning"
        meta_path = cond / "meta.json"
        meta = json.loads(meta_path.read_text("utf-8")) if meta_path.is_file() else {}
        characters = take_characters(take, meta)
        frames = [n for n in frame_numbers(take) if (cond / "masks" / f"{n:04d}.png").is_file()]
        if not characters or not frames:
            continue
        picked = [frames[i] for i in np.linspace(0, len(frames) - 1, min(max_crops, len(frames))).astype(int)]
        shot = take.parent.parent.name
        for number in sorted(set(picked)):
            with Image.open(cond / "masks" / f"{number:04d}.png") as img:
                mask = np.asarray(img)
            with Image.open(take / f"{number:04d}.png") as img:
                frame = np.asarray(img.convert("RGB"))
            if frame.shape[:2] != mask.shape[:2]:
                mask = np.asarray(Image.fromarray(mask).resize(frame.shape[1::-1], Image.NEAREST))
            for key, label, ids in characters:
                box = crop_box(mask, ids)
                if box is None:
                    continue
                top, left, bottom, right = box
                entry = out.setdefault(key, CharacterCrops(label))
                entry.shots.setdefault(shot, []).append(frame[top:bottom, left:right].copy())
    return out


def embed(encoder: Any, crops: list[np.ndarray]) -> np.ndarray:
    """Unit-length image embeddings (N x D) of RGB crops with a CLIP vision encoder."""
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor

    size = encoder.config.image_size
    processor = CLIPImageProcessor(size=size, crop_size=size)
    pixels = processor([Image.fromarray(c) for c in crops], return_tensors="pt").pixel_values
    param = next(encoder.parameters())
    with torch.no_grad():
        vectors = encoder(pixels.to(device=param.device, dtype=param.dtype)).image_embeds.float().cpu().numpy()
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-8)


def cross_shot_similarity(shots: dict[str, np.ndarray]) -> float:
    """Mean cosine over all pairs of embeddings from different shots; NaN with fewer than two shots."""
    names = [s for s in shots if len(shots[s])]
    total, pairs = 0.0, 0
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            sims = shots[first] @ shots[second].T
            total += float(sims.sum())
            pairs += sims.size
    return total / pairs if pairs else float("nan")


def identity_lines(takes: list[Path], encoder: Any, encoder_label: str, max_crops: int = 8) -> list[str]:
    """One line per character: cross-shot identity similarity with the stated encoder."""
    lines = []
    for entry in collect_crops(takes, max_crops).values():
        embedded = {shot: embed(encoder, crops) for shot, crops in entry.shots.items()}
        value = cross_shot_similarity(embedded)
        lines.append(f"identity {entry.name}: {value:.3f} mean cosine across {len(embedded)} shots "
                     f"({entry.count()} crops; encoder {encoder_label})")
    return lines


def default_encoder(takes: list[Path]) -> str | None:
    """The image encoder the takes were made with (their settings), if any."""
    from ..characters.ip_adapter import resolve_ip_adapter

    for take in takes:
        path = take / "take.json"
        if not path.is_file():
            continue
        settings = json.loads(path.read_text("utf-8")).get("settings") or {}
        models = settings.get("models") or {}
        if models.get("image_encoder"):
            return str(models["image_encoder"])
        if models.get("ip_adapter"):
            try:
                return resolve_ip_adapter(models["ip_adapter"], None).encoder.value
            except Exception:  # noqa: BLE001 - a take's stale settings: no default then
                continue
    return None


def load_encoder(value: str) -> Any:
    """A CLIP vision encoder from a folder or a Hub id (safetensors only), on the CPU."""
    import torch

    from ..characters.ip_adapter import load_image_encoder
    from ..models.refs import ModelRef

    path = Path(value).expanduser()
    ref = ModelRef("folder", str(path.resolve()), "--identity-encoder") if path.is_dir() else \
        ModelRef("hub", value, "--identity-encoder")
    return load_image_encoder(ref, torch.float32, lambda phase, detail: None).eval()
