"""Warping along the shot's exact flow, and the pixels that warp cannot carry.

Conventions (docs/user-guide.md, "Where files go"): ``flow/NNNN.npy`` is float32 H x W x 2 *backward*
flow in image pixels (+x right, +y down, row 0 at the top): pixel q of frame N was at
q + flow[q] in frame N-1, so frame N-1 warps into frame N by sampling it at (x+dx, y+dy).
Depth maps are shot-wide normalized inverse depth stored as ``1 + round(v * 65534)``
(0 = no geometry), comparable between the frames of a shot.

Three kinds of pixel of frame N are *marked* (not carried from N-1):
- out of frame: the sample point lies outside frame N-1 (the camera reveals new ground);
- disoccluded: the depth found at the sample point in N-1 is not this pixel's depth in N
  (the point was hidden behind something in N-1), the depth-consistency check;
- no geometry: the flow is 0 there by convention, which is wrong for a sky under a pan.

Numpy only (numpy 1.26 and 2.x): Blender's tests load this file by path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Relative and absolute tolerance on normalized inverse depth for the consistency check.
# A surface point's depth changes a little between frames (dolly, off-axis pan: a few %);
# a disocclusion swaps a foreground depth for a background one (tens of %). Measured in
# tests/blender/test_flow_warp.py and on the demo shots (COHERENCE.md).
DEPTH_REL_TOL = 0.08
DEPTH_ABS_TOL = 0.01


@dataclass
class FlowMasks:
    """Boolean H x W masks of frame N; ``valid`` pixels are carried from frame N-1."""

    valid: np.ndarray
    out_of_frame: np.ndarray
    disoccluded: np.ndarray
    no_geometry: np.ndarray

    @property
    def marked(self) -> np.ndarray:
        return ~self.valid

    def carried_fraction(self) -> float:
        """Share of frame N's geometry pixels that frame N-1 explains; low at a camera cut."""
        geometry = int((~self.no_geometry).sum())
        return float(self.valid.sum()) / geometry if geometry else 0.0


def check_flow(flow: np.ndarray, height: int, width: int, name: str = "flow") -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"{name}: expected an H x W x 2 array of pixel offsets, got shape {flow.shape}")
    if flow.shape[:2] != (height, width):
        flow = resize_flow(flow, height, width)
    if not np.isfinite(flow).all():
        raise ValueError(f"{name}: contains NaN or infinite values; render the shot's control maps again")
    return flow.astype(np.float32, copy=False)


def resize_flow(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a flow field, offsets scaled to the new pixel size."""
    src_h, src_w = flow.shape[:2]
    rows = np.minimum(((np.arange(height) + 0.5) * src_h / height).astype(np.int64), src_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * src_w / width).astype(np.int64), src_w - 1)
    out = flow[rows][:, cols].astype(np.float32)
    out[..., 0] *= width / src_w
    out[..., 1] *= height / src_h
    return out


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    src_h, src_w = array.shape[:2]
    if (src_h, src_w) == (height, width):
        return array
    rows = np.minimum(((np.arange(height) + 0.5) * src_h / height).astype(np.int64), src_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * src_w / width).astype(np.int64), src_w - 1)
    return array[rows][:, cols]


def _sample_points(flow: np.ndarray, height: int, width: int) -> tuple[np.ndarray, ...]:
    """Where each pixel of frame N samples frame N-1: (sx, sy) clipped to the image, their floor
    (x0, y0), and ``inside`` (the unclipped point lies at most half a pixel past the edge)."""
    flow = check_flow(flow, height, width)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    sx = xs + flow[..., 0]
    sy = ys + flow[..., 1]
    inside = (sx >= -0.5) & (sx <= width - 0.5) & (sy >= -0.5) & (sy <= height - 0.5)
    sx = np.clip(sx, 0.0, width - 1.0)
    sy = np.clip(sy, 0.0, height - 1.0)
    return sx, sy, np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64), inside


def warp(image: np.ndarray, flow: np.ndarray, order: str = "linear") -> tuple[np.ndarray, np.ndarray]:
    """Backward-warp ``image`` (frame N-1, H x W or H x W x C) into frame N along ``flow`` (of frame N).

    Samples at (x + dx, y + dy): bilinear (``order="linear"``, what the masks and the metric
    use) or Catmull-Rom bicubic (``"cubic"``: a sharper resampling for carried frames, see
    ``warp_cubic``); samples outside the image take the nearest edge pixel. Returns
    (warped float32, inside) where ``inside`` is False for pixels whose sample point lies
    outside frame N-1 (more than half a pixel past its edge).
    """
    if order == "cubic":
        return warp_cubic(image, flow)
    if order != "linear":
        raise ValueError(f"warp order must be 'linear' or 'cubic', got {order!r}")
    height, width = image.shape[:2]
    sx, sy, x0, y0, inside = _sample_points(flow, height, width)
    x1 = np.minimum(x0 + 1, width - 1)
    y1 = np.minimum(y0 + 1, height - 1)
    fx = sx - x0
    fy = sy - y0
    src = image.astype(np.float32, copy=False)
    if src.ndim == 3:
        fx = fx[..., None]
        fy = fy[..., None]
    top = src[y0, x0] * (1.0 - fx) + src[y0, x1] * fx
    bottom = src[y1, x0] * (1.0 - fx) + src[y1, x1] * fx
    return top * (1.0 - fy) + bottom * fy, inside


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    """Catmull-Rom (Keys, a = -0.5) weights of the taps at -1, 0, 1, 2 for a fractional offset t."""
    t2, t3 = t * t, t * t * t
    return [-0.5 * t3 + t2 - 0.5 * t, 1.5 * t3 - 2.5 * t2 + 1.0, -1.5 * t3 + 2.0 * t2 + 0.5 * t, 0.5 * t3 - 0.5 * t2]


def warp_cubic(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``warp`` with Catmull-Rom bicubic sampling (4 x 4 taps).

    Bilinear sampling at a half-pixel offset halves the amplitude of a 4-pixel-period
    texture; Catmull-Rom keeps 88 % of it and is exact on linear ramps, so detail fades far
    more slowly when a frame is warped again and again (engine/COHERENCE.md, "Sharp FLOW").
    It can overshoot at edges by a few levels; callers clip to 0..255.
    """
    height, width = image.shape[:2]
    sx, sy, x0, y0, inside = _sample_points(flow, height, width)
    wx = _cubic_weights(sx - x0)
    wy = _cubic_weights(sy - y0)
    src = image.astype(np.float32, copy=False)
    out = np.zeros(src.shape, np.float32) if src.ndim == 2 else np.zeros((height, width, src.shape[2]), np.float32)
    for j in range(4):
        rows = np.clip(y0 + j - 1, 0, height - 1)
        row = np.zeros_like(out)
        for i in range(4):
            cols = np.clip(x0 + i - 1, 0, width - 1)
            weight = wx[i] if src.ndim == 2 else wx[i][..., None]
            row += weight * src[rows, cols]
        out += (wy[j] if src.ndim == 2 else wy[j][..., None]) * row
    return out, inside


def area_scale(flow: np.ndarray) -> np.ndarray:
    """Per pixel of frame N, the area of frame N-1 it samples (Jacobian determinant of q + flow[q]).

    1 for a pan; below 1 where the warp stretches frame N-1 (a dolly in, a surface turning
    towards the camera): fewer source pixels cover more target pixels, so the carried frame
    holds less detail than the new view needs there.
    """
    dxdy, dxdx = np.gradient(flow[..., 0])
    dydy, dydx = np.gradient(flow[..., 1])
    return np.abs((1.0 + dxdx) * (1.0 + dydy) - dxdy * dydx).astype(np.float32)


def inverse_depth(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(v in 0..1, geometry mask) from a depth map as stored (uint16 ``1 + round(v*65534)``)."""
    depth = np.asarray(depth)
    if depth.ndim == 3:
        depth = depth[..., 0]
    if depth.dtype == np.uint16 or depth.max(initial=0) > 1.0:
        raw = depth.astype(np.float32)
        geometry = raw > 0
        return np.where(geometry, (raw - 1.0) / 65534.0, 0.0).astype(np.float32), geometry
    value = depth.astype(np.float32)  # already 0..1 (e.g. decoded 8-bit maps): 0 is background
    return value, value > 0


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square max filter: a marked pixel marks its neighbours within ``radius`` pixels."""
    if radius <= 0:
        return mask
    out = mask.copy()
    height, width = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx == 0 and dy == 0:
                continue
            src = mask[max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)]
            out[max(0, dy):height - max(0, -dy), max(0, dx):width - max(0, -dx)] |= src
    return out


def depth_offset(near: float | None, far: float | None) -> float:
    """``c`` with 1/z proportional to v + c for the shot's near/far (meta.json); 0 when unknown.

    The maps hold v = (1/z - 1/far)/(1/near - 1/far), so 1/z = (v + c)(1/near - 1/far)
    with c = near/(far - near), and a relative change of 1/z is |dv| / (v + c). Without
    near/far, c = 0 compares v relatively, which over-marks (never under-marks) shots
    whose depth range is narrow: safe, at the price of more regenerated pixels.
    """
    if near is None or far is None or not far > near > 0:
        return 0.0
    return float(near / (far - near))


def flow_masks(depth_prev: np.ndarray, depth_cur: np.ndarray, flow: np.ndarray, *, offset: float = 0.0,
               rel_tol: float = DEPTH_REL_TOL, abs_tol: float = DEPTH_ABS_TOL, radius: int = 1) -> FlowMasks:
    """Which pixels of frame N warping frame N-1 along ``flow`` carries, by depth consistency.

    Warps frame N-1's inverse depth into frame N and compares it with frame N's: a point
    seen in both frames has nearly the same depth; a disoccluded pixel samples whatever
    covered it in N-1. Bilinear samples that straddle a depth edge or the background also
    fail the check, so object borders are marked (a generated edge is soft anyway).
    ``radius`` dilates the marks to cover that softness. ``offset``: see ``depth_offset``.
    """
    v_prev, geo_prev = inverse_depth(depth_prev)
    v_cur, geo_cur = inverse_depth(depth_cur)
    height, width = v_cur.shape
    if v_prev.shape != v_cur.shape:
        v_prev = resize_nearest(v_prev, height, width)
        geo_prev = resize_nearest(geo_prev, height, width)
    flow = check_flow(flow, height, width)
    v_warped, inside = warp(v_prev, flow)
    geo_warped, _ = warp(geo_prev.astype(np.float32), flow)
    consistent = np.abs(v_warped - v_cur) <= rel_tol * (np.maximum(v_warped, v_cur) + offset) + abs_tol
    # Any background among the 4 bilinear taps: the sample is not one surface point.
    consistent &= geo_warped >= 0.999
    no_geometry = ~geo_cur
    out_of_frame = ~inside
    disoccluded = geo_cur & inside & ~consistent
    marked = dilate(out_of_frame | disoccluded, radius) | no_geometry
    return FlowMasks(valid=~marked, out_of_frame=out_of_frame, disoccluded=disoccluded, no_geometry=no_geometry)
