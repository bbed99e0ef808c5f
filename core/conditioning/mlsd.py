"""Straight segments fitted to the geometry's 1-pixel lines, for the MLSD form of the line-art map.

M-LSD maps (the ControlNet 1.1 mlsd model's input) hold straight segments only, 1 pixel wide,
white on black. Our lines come from the scene (lineart.py), so the segments are fitted to
them, never detected in an image:

1. each line pixel gets its local direction: the principal axis of the line pixels around it
   (a 9x9 window, moments from integral images);
2. each pixel votes for the 3-degree direction bins within 9 degrees of its own; in each bin the
   pixels are grouped by their offset across that direction (a new group where consecutive
   offsets jump by more than 0.75 px: parallel lines a pixel apart stay apart), then into runs
   along it (gaps over 2.5 px split); runs are taken longest first while most of their pixels
   are unclaimed;
3. a run becomes a segment when it has at least MIN_LENGTH pixels, covers most of its span,
   and every pixel lies within MAX_RESIDUAL of the fitted line: curves give no segment unless
   a piece of them is that straight, as M-LSD would see them;
4. each segment grows along its line over the line pixels that continue it (a corner's pixels
   have no clear direction, so step 2 leaves them out; the sides must still meet there).

Plain numpy; runs on any thread.
"""

from __future__ import annotations

import numpy as np

MIN_LENGTH = 8
MAX_RESIDUAL = 1.0
BIN_DEG = 3.0
SPREAD_DEG = 9.0  # a pixel votes for the direction bins this close to its own direction
_WINDOW = 4  # half-size of the direction window


def _box_sums(field: np.ndarray, radius: int) -> np.ndarray:
    """Sum of `field` over the (2r+1)^2 window around every pixel (zero outside), via an integral image."""
    h, w = field.shape
    padded = np.zeros((h + 2 * radius + 1, w + 2 * radius + 1))
    padded[radius + 1:radius + 1 + h, radius + 1:radius + 1 + w] = field
    integral = padded.cumsum(0).cumsum(1)
    size = 2 * radius + 1
    return (integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size]
            + integral[:-size, :-size])


def directions(lines: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ys, xs, angle in radians [0, pi)) of every line pixel: the principal axis of its neighbourhood."""
    ys, xs = np.nonzero(lines)
    if ys.size == 0:
        return ys, xs, np.zeros(0)
    grid_y, grid_x = np.indices(lines.shape, dtype=np.float64)
    mask = lines.astype(np.float64)
    sums = {name: _box_sums(mask * f, _WINDOW)[ys, xs] for name, f in (
        ("n", 1.0), ("x", grid_x), ("y", grid_y), ("xx", grid_x * grid_x), ("yy", grid_y * grid_y),
        ("xy", grid_x * grid_y))}
    n = sums["n"]
    mx, my = sums["x"] / n, sums["y"] / n
    cxx, cyy, cxy = sums["xx"] / n - mx * mx, sums["yy"] / n - my * my, sums["xy"] / n - mx * my
    angle = 0.5 * np.arctan2(2.0 * cxy, cxx - cyy)
    return ys, xs, np.mod(angle, np.pi)


def _runs(keys: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """Run ids over sorted items: a new run where `keys` change or `gaps` is True."""
    new = np.ones(keys.size, dtype=bool)
    new[1:] = (keys[1:] != keys[:-1]) | gaps[1:]
    return np.cumsum(new) - 1


def _candidate_runs(xs: np.ndarray, ys: np.ndarray, angle: np.ndarray) -> list[np.ndarray]:
    """Pixel index arrays of every run with MIN_LENGTH pixels or more, in every direction bin a pixel votes for."""
    width = np.radians(BIN_DEG)
    bins_total = int(round(np.pi / width))
    spread = int(np.ceil(SPREAD_DEG / BIN_DEG))
    offsets = np.arange(-spread, spread + 1)
    pixel = np.repeat(np.arange(xs.size), offsets.size)
    bins = ((np.floor(angle / width).astype(np.int64)[:, None] + offsets[None, :]) % bins_total).ravel()
    centre = (bins + 0.5) * width
    x, y = xs[pixel].astype(np.float64), ys[pixel].astype(np.float64)
    along = x * np.cos(centre) + y * np.sin(centre)
    across = -x * np.sin(centre) + y * np.cos(centre)
    # Group: direction bin, then offset across (gaps split), then position along (gaps split).
    order = np.lexsort((across, bins))
    group = np.empty(pixel.size, dtype=np.int64)
    group[order] = _runs(bins[order], np.diff(across[order], prepend=-np.inf) > 0.75)
    order = np.lexsort((along, group))
    run = _runs(group[order], np.diff(along[order], prepend=-np.inf) > 2.5)
    bounds = np.flatnonzero(np.diff(run, prepend=-1, append=-1))
    return [pixel[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:]) if b - a >= MIN_LENGTH]


def straight_segments(lines: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Segments (x0, y0, x1, y1) in pixel coordinates fitted to the straight parts of `lines`.

    Every pixel votes for the direction bins within SPREAD_DEG of its own direction (a stair-stepped
    line's local directions wander); runs are then taken longest first, each only while most of its
    pixels are not yet part of a segment, so one line gives one segment, not one per bin.
    """
    ys, xs, angle = directions(lines)
    if ys.size < MIN_LENGTH:
        return []
    candidates = sorted(_candidate_runs(xs, ys, angle), key=len, reverse=True)
    claimed = np.zeros(ys.size, dtype=bool)
    segments = []
    for picked in candidates:
        if (~claimed[picked]).sum() < max(MIN_LENGTH, 0.5 * picked.size):
            continue
        segment = _fit(xs[picked].astype(np.float64), ys[picked].astype(np.float64))
        if segment is not None:
            claimed[picked] = True
            segments.append(_extend(segment, xs, ys))
    return segments


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float] | None:
    """The least-squares segment through the points, or None when they are not straight or too sparse."""
    cx, cy = x.mean(), y.mean()
    coords = np.stack([x - cx, y - cy])
    _values, vectors = np.linalg.eigh(coords @ coords.T)
    direction = vectors[:, 1]
    t = direction @ coords
    residual = np.abs(vectors[:, 0] @ coords)
    span = t.max() - t.min()
    if residual.max() > MAX_RESIDUAL or x.size < 0.6 * (span + 1.0):
        return None
    return (cx + direction[0] * t.min(), cy + direction[1] * t.min(),
            cx + direction[0] * t.max(), cy + direction[1] * t.max())


def _extend(segment: tuple[float, float, float, float], xs: np.ndarray,
            ys: np.ndarray) -> tuple[float, float, float, float]:
    """The segment grown at both ends over line pixels within MAX_RESIDUAL of its line, without gaps."""
    x0, y0, x1, y1 = segment
    length = float(np.hypot(x1 - x0, y1 - y0))
    if length == 0.0:
        return segment
    dx, dy = (x1 - x0) / length, (y1 - y0) / length
    t = (xs - x0) * dx + (ys - y0) * dy
    on_line = np.abs((xs - x0) * -dy + (ys - y0) * dx) <= MAX_RESIDUAL
    ts = np.unique(np.round(t[on_line], 1))
    low, high = 0.0, length
    before = ts[ts < low][::-1]
    for value in before:
        if low - value > 1.5:
            break
        low = value
    for value in ts[ts > high]:
        if value - high > 1.5:
            break
        high = value
    return (x0 + dx * low, y0 + dy * low, x0 + dx * high, y0 + dy * high)


def draw_segments(shape: tuple[int, int], segments: list[tuple[float, float, float, float]]) -> np.ndarray:
    """(H, W) bool with each segment drawn 1 pixel wide (pixel centres nearest the line)."""
    out = np.zeros(shape, dtype=bool)
    h, w = shape
    for x0, y0, x1, y1 in segments:
        steps = int(np.ceil(max(abs(x1 - x0), abs(y1 - y0)))) + 1
        t = np.linspace(0.0, 1.0, steps)
        px = np.rint(x0 + (x1 - x0) * t).astype(np.int64)
        py = np.rint(y0 + (y1 - y0) * t).astype(np.int64)
        keep = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        out[py[keep], px[keep]] = True
    return out
