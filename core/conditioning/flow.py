"""Optical flow from Blender's vector pass, in image pixels with +y down.

Blender's vector pass holds, per pixel of frame t and in Blender's y-up pixel
units, XY = (position in t−1) − (position in t) and ZW = (position in t) −
(position in t+1) (measured against an analytic camera truck and pan in
tests/blender/test_conditioning.py). We store both directions in the
convention image tools use (row 0 at the top, +x right, +y down):

- `flow/NNNN.npy` (backward): for each pixel q of frame N, q + b(q) is where
  that surface point was in frame N−1. To warp generated frame N−1 into frame
  N (backward warping), sample frame N−1 at q + b(q): the one file a
  temporal-coherence step needs per frame.
- `flow/forward/NNNN.npy`: for each pixel p of frame N, p + f(p) is where that
  surface point is in frame N+1.

Plain numpy; runs on any thread.
"""

from __future__ import annotations

import numpy as np

FORMAT = "npy float32 HxWx2"
CONVENTION = {
    "format": FORMAT,
    "backward": (
        "flow/NNNN.npy: pixel offset (dx, dy) from frame N to frame N-1, defined on frame N's pixels; "
        "to warp frame N-1 into frame N, sample frame N-1 at (x + dx, y + dy)"
    ),
    "forward": "flow/forward/NNNN.npy: pixel offset (dx, dy) from frame N to frame N+1, defined on frame N's pixels",
    "axes": "+x right, +y down, image pixels, row 0 at the top, pixel centers at integer + 0.5",
    "background": "0 where no geometry",
}


def flows_from_vector_pass(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) float32 (H, W, 2) arrays from the four vector-pass channels (rows top-down)."""
    forward = np.stack((-z, w), axis=-1).astype(np.float32)
    backward = np.stack((x, -y), axis=-1).astype(np.float32)
    return forward, backward
