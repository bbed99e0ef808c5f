"""Depth control maps: normalized inverse depth over the whole shot, 16-bit.

`v = (1/z − 1/far) / (1/near − 1/far)`, white = near, with near/far the
smallest and largest z seen over the whole shot: per-frame min–max would make
the map pulse from frame to frame, which the generator turns into flicker.

Stored as `1 + round(v · 65534)` for geometry and 0 for background, so that the
farthest geometry (v = 0) stays distinguishable from "nothing there" and z
decodes exactly from the PNG and `near`/`far` in meta.json.

Plain numpy; runs on any thread.
"""

from __future__ import annotations

import numpy as np

FORMULA = "v = (1/z - 1/far) / (1/near - 1/far); png16 = 1 + round(v * 65534) for geometry, 0 for background"
# Cycles writes 1e10 where a ray hits nothing.
BACKGROUND_Z = 1.0e9


def geometry_mask(z: np.ndarray) -> np.ndarray:
    return np.isfinite(z) & (z > 0.0) & (z < BACKGROUND_Z)


def z_range(z: np.ndarray) -> tuple[float, float] | None:
    """(min, max) z of the geometry in one frame, None when the frame shows nothing."""
    hit = z[geometry_mask(z)]
    if hit.size == 0:
        return None
    return float(hit.min()), float(hit.max())


def merge_ranges(ranges: list[tuple[float, float] | None]) -> tuple[float, float] | None:
    seen = [r for r in ranges if r is not None]
    if not seen:
        return None
    return min(r[0] for r in seen), max(r[1] for r in seen)


def encode(z: np.ndarray, near: float, far: float) -> np.ndarray:
    """uint16 map of z (view-axis distance) for the shot's near/far."""
    hit = geometry_mask(z)
    inv = np.zeros(z.shape, dtype=np.float64)
    inv[hit] = 1.0 / z[hit]
    if far > near:
        v = (inv - 1.0 / far) / (1.0 / near - 1.0 / far)
    else:
        v = np.ones(z.shape)  # one distance only: all geometry is "near"
    out = np.zeros(z.shape, dtype=np.uint16)
    out[hit] = (1.0 + np.rint(np.clip(v[hit], 0.0, 1.0) * 65534.0)).astype(np.uint16)
    return out


def decode(png16: np.ndarray, near: float, far: float) -> np.ndarray:
    """z back from a depth map (inf for background). Exact to the 16-bit quantization."""
    out = np.full(png16.shape, np.inf)
    hit = png16 > 0
    v = (png16[hit].astype(np.float64) - 1.0) / 65534.0
    if far > near:
        out[hit] = 1.0 / (v * (1.0 / near - 1.0 / far) + 1.0 / far)
    else:
        out[hit] = near
    return out
