"""Image codecs of the engine: control-map PNGs to tensors, PNGs to pixels and pixels to PNG.

The one place the engine reads and writes PNG bytes (frames, control maps, references).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image


def decode_depth(png: bytes, size: tuple[int, int] | None = None) -> torch.Tensor:
    """16-bit (or 8-bit) grayscale depth PNG -> float tensor (3, H, W) in 0..1.

    Decoded from the full 16 bits: going through an 8-bit PIL mode would band the
    depth into 256 levels and the ControlNet would draw contour lines. ``size``: the job's
    (width, height), which the decoder enforces (engine/images.py).
    """
    import torch

    with _bounded_map(png, size, "depth map") as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(img).astype(np.float32) / 65535.0
        else:
            array = np.asarray(img.convert("L")).astype(np.float32) / 255.0
    channel = torch.from_numpy(np.clip(array, 0.0, 1.0))
    return channel.unsqueeze(0).expand(3, -1, -1).contiguous()


def _bounded_map(png: bytes, size: tuple[int, int] | None, what: str) -> Any:
    from .. import images
    from ..api import limits

    if size is None:
        return images.decode(png, max_pixels=limits.MAX_SIDE * limits.MAX_SIDE, field="frames", what=what)
    return images.decode(png, size=size, max_pixels=size[0] * size[1], field="frames", what=what)


def decode_rgb(png: bytes, size: tuple[int, int] | None = None) -> torch.Tensor:
    """An OpenPose drawing (RGB PNG) -> float tensor (3, H, W) in 0..1; ``size`` as for decode_depth."""
    import torch

    with _bounded_map(png, size, "pose map") as img:
        array = np.asarray(img.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def read_rgb(png: bytes, *, max_pixels: int, size: tuple[int, int] | None = None, what: str = "image",
             field: str = "frames") -> np.ndarray:
    """PNG bytes -> H x W x 3 uint8 pixels, through the one bounded decoder (engine/images.py): at most
    ``max_pixels``, exactly ``size`` when given, a 4xx naming ``field`` and ``what`` otherwise."""
    from .. import images

    with images.decode(png, size=size, max_pixels=max_pixels, field=field, what=what) as img:
        return np.asarray(img.convert("RGB"))
