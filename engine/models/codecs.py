"""Image codecs of the engine: control-map PNGs to tensors, PNGs to pixels and pixels to PNG.

The one place the engine reads and writes PNG bytes (frames, control maps, references).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image


def decode_depth(png: bytes) -> torch.Tensor:
    """16-bit (or 8-bit) grayscale depth PNG -> float tensor (3, H, W) in 0..1.

    Decoded from the full 16 bits: going through an 8-bit PIL mode would band the
    depth into 256 levels and the ControlNet would draw contour lines.
    """
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(img).astype(np.float32) / 65535.0
        else:
            array = np.asarray(img.convert("L")).astype(np.float32) / 255.0
    channel = torch.from_numpy(np.clip(array, 0.0, 1.0))
    return channel.unsqueeze(0).expand(3, -1, -1).contiguous()


def decode_rgb(png: bytes) -> torch.Tensor:
    """An OpenPose drawing (RGB PNG) -> float tensor (3, H, W) in 0..1."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        array = np.asarray(img.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def read_rgb(png: bytes) -> np.ndarray:
    """PNG (or any image PIL reads) bytes -> H x W x 3 uint8 pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGB"))
