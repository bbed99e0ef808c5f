"""Upscalers for Finalize Take: a super-resolution model read by spandrel, or plain resizing.

Finalize Take (engine/jobs/finalize.py) first enlarges each approved frame to the delivery size,
then runs a low-strength detail pass. The enlargement is either:
- a super-resolution model file (Real-ESRGAN RRDBNet, Real-ESRGAN Compact, SwinIR, HAT, ...:
  any architecture spandrel recognises from its weights), read from ``.safetensors`` only:
  pickle formats (``.pth``, ``.ckpt``, ...) can run code when loaded and are refused;
- or plain Lanczos resizing (``upscaler`` left empty), the baseline the benchmark compares
  against (benchmarks/bench_finals.py).
A model whose own factor differs from the wanted size is run once and the result resized.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from ..contract.errors import BadRequest
from .refs import PICKLE_SUFFIXES

logger = logging.getLogger(__name__)

# Frames are cut into tiles of this many input pixels a side (plus an overlap) so that a
# 4x model on a 1080p frame fits in memory; tiny frames run whole.
TILE = 256
TILE_OVERLAP = 16


def check_upscaler_path(value: str | None, field: str = "finalize.upscaler") -> Path | None:
    """The upscaler file for ``value`` (None: plain resizing); 4xx naming ``field`` otherwise. HTTP thread."""
    from .refs import check_allowed, not_usable

    if value is None or not value.strip():
        return None
    check_allowed(value, field)
    path = Path(os.path.expanduser(value.strip()))
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise BadRequest(
            f"{field}: '{value}' is a pickle-based {suffix} file, which the engine refuses to load because "
            "unpickling can run code hidden in the file. Convert it to .safetensors (for example with "
            "chaiNNer, or torch.load + safetensors.torch.save_file on a trusted machine) or pick a "
            ".safetensors upscaler.", field=field, code="unsafe_model_format")
    if suffix != ".safetensors":
        raise BadRequest(f"{field}: '{value}' is not a .safetensors upscaler file (Real-ESRGAN, SwinIR, HAT, "
                         "... weights); leave it empty for plain resizing", field=field)
    if not path.is_file():
        raise not_usable(value, field)  # the same words whatever is (or is not) on the disk
    return path.resolve()


class Upscaler:
    """A loaded super-resolution model; ``scale`` is its own factor (2, 4, ...)."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import spandrel
        import torch
        from safetensors.torch import load_file

        # 1. Weights through safetensors only (never spandrel's pickle path), architecture by spandrel.
        state = load_file(str(path), device="cpu")
        try:
            descriptor = spandrel.ModelLoader().load_from_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - spandrel raises several types for unknown layouts
            raise BadRequest(f"finalize.upscaler: '{path.name}' is not an upscaler spandrel recognises "
                             f"({type(exc).__name__}: {exc}); use a Real-ESRGAN, SwinIR, HAT, ... "
                             ".safetensors file", field="finalize.upscaler") from exc
        if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.scale < 2:
            raise BadRequest(f"finalize.upscaler: '{path.name}' is a {descriptor.architecture.name} model of "
                             f"scale {descriptor.scale}, not a super-resolution model", field="finalize.upscaler")
        self.descriptor = descriptor.to(torch.device(device)).eval()
        self.scale = int(descriptor.scale)
        self.name = f"{descriptor.architecture.name} x{self.scale}"
        self.device = device

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 -> (H*scale) x (W*scale) x 3 uint8, tile by tile."""
        import torch

        height, width = image.shape[:2]
        scale = self.scale
        out = np.zeros((height * scale, width * scale, 3), np.float32)
        src = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        for top in range(0, height, TILE):
            for left in range(0, width, TILE):
                # Tiles read an overlap around them and keep only their own part: no seams.
                y0, x0 = max(0, top - TILE_OVERLAP), max(0, left - TILE_OVERLAP)
                y1, x1 = min(height, top + TILE + TILE_OVERLAP), min(width, left + TILE + TILE_OVERLAP)
                with torch.no_grad():
                    tile = self.descriptor(src[..., y0:y1, x0:x1].to(self.device)).float().cpu()[0]
                tile = tile.clamp(0, 1).permute(1, 2, 0).numpy()
                h, w = min(TILE, height - top), min(TILE, width - left)
                oy, ox = (top - y0) * scale, (left - x0) * scale
                out[top * scale:(top + h) * scale, left * scale:(left + w) * scale] = \
                    tile[oy:oy + h * scale, ox:ox + w * scale]
        return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


_loaded: dict[tuple[str, str, int, int], Upscaler] = {}
_lock = threading.Lock()


def load_upscaler(path: Path, device: str = "cpu") -> Upscaler:
    """The upscaler at ``path``, kept loaded (one at a time) while the file is unchanged. Worker thread."""
    stat = path.stat()
    key = (str(path), device, stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key not in _loaded:
            _loaded.clear()
            _loaded[key] = Upscaler(path, device)
            logger.info("Loaded upscaler %s (%s) on %s", path.name, _loaded[key].name, device)
        return _loaded[key]


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Plain Lanczos resizing: the baseline, and the last step when a model's factor is not the wanted one."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def enlarge(image: np.ndarray, width: int, height: int, upscaler: Upscaler | None) -> np.ndarray:
    """``image`` at ``width`` x ``height``: through the model (when given and it enlarges), then resized."""
    if upscaler is not None and width > image.shape[1]:
        image = upscaler(image)
    return resize(image, width, height)

