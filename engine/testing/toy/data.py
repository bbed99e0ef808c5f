"""The toy-world dataset as arrays, and the maps exactly as the engine gives them to a ControlNet.

Plain numpy (torch only where a tensor is returned); used by train.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 64


def load_dataset(data: Path, split: str = "train") -> dict[str, Any]:
    """Every frame of a split as arrays (cached next to the data as ``SPLIT.npz``)."""
    from PIL import Image

    cache = data / f"{split}.npz"
    records = [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines()]
    arrays = {}
    if cache.is_file() and cache.stat().st_mtime >= (data / f"{split}.jsonl").stat().st_mtime:
        arrays = dict(np.load(cache))
    if "things" not in arrays:  # no cache yet, or one written before the things' masks were kept
        n = len(records)
        arrays = {"rgb": np.zeros((n, SIZE, SIZE, 3), np.uint8), "depth": np.zeros((n, SIZE, SIZE), np.uint16),
                  "pose": np.zeros((n, SIZE, SIZE, 3), np.uint8), "has_pose": np.zeros(n, bool),
                  "things": np.zeros((n, SIZE, SIZE), bool)}
        for i, r in enumerate(records):
            arrays["rgb"][i] = np.asarray(Image.open(data / r["rgb"]).convert("RGB"))
            ids = np.asarray(Image.open(data / r["mask"]))
            arrays["things"][i] = np.isin(ids, [t["id"] for t in r["things"]])
            arrays["depth"][i] = np.asarray(Image.open(data / r["depth"]))
            if r["pose"]:
                arrays["pose"][i] = np.asarray(Image.open(data / r["pose"]).convert("RGB"))
                arrays["has_pose"][i] = True
        np.savez(cache, **arrays)
    arrays["captions"] = [r["caption"] for r in records]
    return arrays


def batches(n: int, batch: int, rng: np.random.Generator, subset: np.ndarray | None = None) -> Iterator[np.ndarray]:
    pool = np.arange(n) if subset is None else subset
    batch = min(batch, len(pool))
    while True:
        order = rng.permutation(pool)
        for i in range(0, len(order) - batch + 1, batch):
            yield order[i:i + batch]


def images(arrays: dict[str, Any], idx: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(arrays["rgb"][idx]).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def control_maps(arrays: dict[str, Any], idx: np.ndarray, kind: str) -> Any:
    """The ControlNet inputs exactly as the engine builds them (engine/pipelines.decode_depth/decode_rgb)."""
    import torch

    if kind == "depth":
        depth = torch.from_numpy(arrays["depth"][idx].astype(np.float32) / 65535.0)
        return depth.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return torch.from_numpy(arrays["pose"][idx]).permute(0, 3, 1, 2).float() / 255.0


def thing_weights(arrays: dict[str, Any], idx: np.ndarray, weight: float, scale: int = 4) -> Any:
    """A loss weight per latent pixel: 1 on ground and sky, up to ``1 + weight`` where the frame's
    captioned things cover the latent pixel's whole footprint (their masks, box-pooled to the latents'
    1/``scale`` resolution). The things are a small share of a frame, and they are what a prompt names."""
    import torch

    things = torch.from_numpy(arrays["things"][idx].astype(np.float32)).unsqueeze(1)
    return 1.0 + weight * torch.nn.functional.avg_pool2d(things, scale)
