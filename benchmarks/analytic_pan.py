"""A 120-frame analytic pan: control maps with a known exact flow, for FLOW's sharpness checks.

A plane whose depth changes only with height, seen by a camera panning sideways at
``SPEED`` pixels a frame (a fraction, so every warp resamples between pixels): each frame
is the previous one shifted left, a new strip entering at the right. Used by
``benchmarks/bench_sharp_flow.py`` and ``tests/engine/test_sharpness.py``.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 96, 64
FRAMES = 120
SPEED = 0.7  # pixels per frame


def depth_map(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """uint16 as stored: inverse depth from 0.3 (top) to 0.7 (bottom), the same in every frame of a pan."""
    v = np.linspace(0.3, 0.7, height, dtype=np.float32)[:, None].repeat(width, axis=1)
    return (1 + np.rint(v * 65534)).astype(np.uint16)


def flow_map(width: int = WIDTH, height: int = HEIGHT, speed: float = SPEED) -> np.ndarray:
    """Backward flow: pixel x of frame N was at x + speed in frame N-1 (the view moves right)."""
    flow = np.zeros((height, width, 2), np.float32)
    flow[..., 0] = speed
    return flow


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()
