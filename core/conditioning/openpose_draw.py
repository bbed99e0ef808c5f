"""The standard OpenPose drawing, pixel-identical to controlnet-aux's `draw_bodypose` / `draw_handpose`.

The ControlNet OpenPose models were trained on maps drawn by controlnet-aux
with OpenCV; a different rasterization (anti-aliasing, another ellipse
approximation) is a different input distribution. Blender's Python has numpy
but no cv2, so the few OpenCV primitives involved are re-implemented here with
OpenCV's integer arithmetic: `ellipse2Poly`, `fillConvexPoly` (8-connected
outline + edge-walking scanline fill), filled `circle` and the 2-px `line`.
tests/unit/test_pose_drawing.py compares every pixel against controlnet-aux.

Coordinates are normalized (x / width, y / height), as controlnet-aux expects;
None is a keypoint that is not visible. Plain numpy; runs on any thread.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

Point = tuple[float, float]

STICK_WIDTH = 4
LIMB_SEQ = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11),
    (2, 12), (12, 13), (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18),
)  # fmt: skip
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)  # fmt: skip
_EPS = 0.01
_XY_SHIFT = 16
_XY_ONE = 1 << _XY_SHIFT

# OpenCV's table of sin(0°…450°) as float literals with 7 decimals.
_SIN_TABLE = np.array([round(math.sin(math.radians(i)), 7) for i in range(451)], dtype=np.float32)
_COS_STEPS = _SIN_TABLE[450 - np.arange(361)].astype(np.float64)
_SIN_STEPS = _SIN_TABLE[np.arange(361)].astype(np.float64)


def _cv_round(value: float) -> int:
    return int(np.rint(value))  # round half to even, as cvRound (lrint) does


def _trunc_div(num: int, den: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(num) // abs(den)
    return q if (num >= 0) == (den >= 0) else -q


# --- OpenCV primitives ------------------------------------------------------------


def ellipse2poly(center: tuple[int, int], axes: tuple[int, int], angle: int) -> list[tuple[int, int]]:
    """cv2.ellipse2Poly(center, axes, angle, 0, 360, 1)."""
    while angle < 0:
        angle += 360
    while angle > 360:
        angle -= 360
    alpha = float(_SIN_TABLE[450 - angle])  # cos
    beta = float(_SIN_TABLE[angle])  # sin
    # All 361 points at once: the same float64 operations, in the same order, as OpenCV's loop.
    x = axes[0] * _COS_STEPS
    y = axes[1] * _SIN_STEPS
    px = np.rint(center[0] + x * alpha - y * beta).astype(np.int64)
    py = np.rint(center[1] + x * beta + y * alpha).astype(np.int64)
    keep = np.ones(px.size, dtype=bool)
    keep[1:] = (px[1:] != px[:-1]) | (py[1:] != py[:-1])  # OpenCV drops consecutive repeats only
    pts = list(zip(px[keep].tolist(), py[keep].tolist()))
    if len(pts) == 1:
        pts = [center, center]
    return pts


def _clip_line(width: int, height: int, p1: list[int], p2: list[int]) -> bool:
    """cv::clipLine on an image of the given size; edits p1/p2 in place."""
    right, bottom = width - 1, height - 1
    x1, y1 = p1
    x2, y2 = p2
    c1 = (x1 < 0) + (x1 > right) * 2 + (y1 < 0) * 4 + (y1 > bottom) * 8
    c2 = (x2 < 0) + (x2 > right) * 2 + (y2 < 0) * 4 + (y2 > bottom) * 8
    if (c1 & c2) == 0 and (c1 | c2) != 0:
        if c1 & 12:
            a = 0 if c1 < 8 else bottom
            x1 += _trunc_div((a - y1) * (x2 - x1), y2 - y1)
            y1 = a
            c1 = (x1 < 0) + (x1 > right) * 2
        if c2 & 12:
            a = 0 if c2 < 8 else bottom
            x2 += _trunc_div((a - y2) * (x2 - x1), y2 - y1)
            y2 = a
            c2 = (x2 < 0) + (x2 > right) * 2
        if (c1 & c2) == 0 and (c1 | c2) != 0:
            if c1:
                a = 0 if c1 == 1 else right
                y1 += _trunc_div((a - x1) * (y2 - y1), x2 - x1)
                x1 = a
                c1 = 0
            if c2:
                a = 0 if c2 == 1 else right
                y2 += _trunc_div((a - x2) * (y2 - y1), x2 - x1)
                x2 = a
                c2 = 0
    p1[:] = [x1, y1]
    p2[:] = [x2, y2]
    return (c1 | c2) == 0


def _line8(img: np.ndarray, pt1: tuple[int, int], pt2: tuple[int, int], color: np.ndarray) -> None:
    """cv::Line with 8-connectivity (LineIterator, left to right)."""
    h, w = img.shape[:2]
    p1, p2 = [pt1[0], pt1[1]], [pt2[0], pt2[1]]
    if not (0 <= p1[0] < w and 0 <= p2[0] < w and 0 <= p1[1] < h and 0 <= p2[1] < h):
        if not _clip_line(w, h, p1, p2):
            return
    dx, dy = p2[0] - p1[0], p2[1] - p1[1]
    if dx < 0:
        dx, dy = -dx, -dy
        p1 = p2
    sy = 1
    if dy < 0:
        dy, sy = -dy, -1
    major, minor = (1, 0), (0, sy)
    if dy > dx:
        dx, dy = dy, dx
        major, minor = (0, sy), (1, 0)
    err = dx - 2 * dy
    x, y = p1
    for _ in range(dx + 1):
        img[y, x] = color
        if err < 0:
            err += 2 * dx - 2 * dy
            x, y = x + major[0] + minor[0], y + major[1] + minor[1]
        else:
            err -= 2 * dy
            x, y = x + major[0], y + major[1]


def _line2(img: np.ndarray, p1: list[int], p2: list[int], color: np.ndarray) -> None:
    """cv::Line2: the outline of a sub-pixel (XY_SHIFT) polygon."""
    h, w = img.shape[:2]
    if not _clip_line(w << _XY_SHIFT, h << _XY_SHIFT, p1, p2):
        return
    dx, dy = p2[0] - p1[0], p2[1] - p1[1]
    ax, ay = abs(dx), abs(dy)

    def put(x: int, y: int) -> None:
        if 0 <= x < w and 0 <= y < h:
            img[y, x] = color

    if ax > ay:
        if dx < 0:
            dy = -dy
            p1, p2 = p2, p1
        x_step, y_step = _XY_ONE, _trunc_div(dy << _XY_SHIFT, ax | 1)
        ecount = (p2[0] - p1[0]) >> _XY_SHIFT
    else:
        if dy < 0:
            dx = -dx
            p1, p2 = p2, p1
        x_step, y_step = _trunc_div(dx << _XY_SHIFT, ay | 1), _XY_ONE
        ecount = (p2[1] - p1[1]) >> _XY_SHIFT
    x1, y1 = p1[0] + (_XY_ONE >> 1), p1[1] + (_XY_ONE >> 1)
    put((p2[0] + (_XY_ONE >> 1)) >> _XY_SHIFT, (p2[1] + (_XY_ONE >> 1)) >> _XY_SHIFT)
    if ax > ay:
        x1 >>= _XY_SHIFT
        while ecount >= 0:
            put(x1, y1 >> _XY_SHIFT)
            x1 += 1
            y1 += y_step
            ecount -= 1
    else:
        y1 >>= _XY_SHIFT
        while ecount >= 0:
            put(x1 >> _XY_SHIFT, y1)
            x1 += x_step
            y1 += 1
            ecount -= 1


# One function past the ~60 lines the rest keeps to: a step-by-step port of OpenCV's FillConvexPoly
# (imgproc/src/drawing.cpp), kept in its shape so it can be read against the source it must match
# pixel for pixel (tests/unit/test_pose_drawing.py).
def fill_convex_poly(img: np.ndarray, v: Sequence[tuple[int, int]], color: Sequence[int], shift: int = 0) -> None:
    """cv2.fillConvexPoly(img, v, color) with LINE_8 (shift 0) or ThickLine's sub-pixel polygon (shift 16)."""
    col = np.asarray(color, dtype=img.dtype)
    h, w = img.shape[:2]
    npts = len(v)
    delta = 1 << shift >> 1
    delta1 = delta2 = _XY_ONE >> 1
    xmin, xmax, ymin, ymax, imin = _outline(img, v, col, shift)
    xmin, xmax = (xmin + delta) >> shift, (xmax + delta) >> shift
    ymin, ymax = (ymin + delta) >> shift, (ymax + delta) >> shift
    if npts < 3 or xmax < 0 or ymax < 0 or xmin >= w or ymin >= h:
        return
    ymax = min(ymax, h - 1)
    edges = npts
    e_idx, e_di, e_x, e_dx = [imin, imin], [1, npts - 1], [-_XY_ONE, -_XY_ONE], [0, 0]
    y = ymin
    e_ye = [y, y]
    while True:
        for i in range(2):
            if y >= e_ye[i]:
                idx0, di = e_idx[i], e_di[i]
                idx = idx0 + di
                if idx >= npts:
                    idx -= npts
                while True:
                    edges -= 1
                    if edges < 0:
                        break
                    ty = (v[idx][1] + delta) >> shift
                    if ty > y:
                        xs = v[idx0][0] << (_XY_SHIFT - shift)
                        xe = v[idx][0] << (_XY_SHIFT - shift)
                        e_ye[i] = ty
                        num, den = (xe - xs) * 2 + (ty - y), 2 * (ty - y)  # den > 0: C division, inlined
                        e_dx[i] = num // den if num >= 0 else -(-num // den)
                        e_x[i] = xs
                        e_idx[i] = idx
                        break
                    idx0 = idx
                    idx += di
                    if idx >= npts:
                        idx -= npts
        if edges < 0:
            break
        if y >= 0:
            left, right = (1, 0) if e_x[0] > e_x[1] else (0, 1)
            xx1 = (e_x[left] + delta1) >> _XY_SHIFT
            xx2 = (e_x[right] + delta2) >> _XY_SHIFT
            if xx2 >= 0 and xx1 < w:
                img[y, max(xx1, 0) : min(xx2, w - 1) + 1] = col
        e_x[0] += e_dx[0]
        e_x[1] += e_dx[1]
        y += 1
        if y > ymax:
            break


def _outline(img: np.ndarray, v: Sequence[tuple[int, int]], col: np.ndarray, shift: int
             ) -> tuple[int, int, int, int, int]:
    """FillConvexPoly's first loop: draw the polygon's edges; return (xmin, xmax, ymin, ymax, imin).

    For pixel polygons (shift 0, the limbs' ellipses: hundreds of vertices a step apart) the edges
    whose two ends are neighbours inside the image cover exactly those two pixels, so they are set
    in one numpy assignment; the same pixels in the same colour as edge-by-edge, faster. imin is
    the first vertex with the smallest y, as OpenCV's strict `<` finds it.
    """
    points = np.asarray(v, dtype=np.int64)
    xs, ys = points[:, 0], points[:, 1]
    bounds = (int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max()), int(np.argmin(ys)))
    if shift != 0:
        p0 = (v[-1][0] << (_XY_SHIFT - shift), v[-1][1] << (_XY_SHIFT - shift))
        for px, py in v:
            p = (px << (_XY_SHIFT - shift), py << (_XY_SHIFT - shift))
            _line2(img, [p0[0], p0[1]], [p[0], p[1]], col)
            p0 = p
        return bounds
    h, w = img.shape[:2]
    ax, ay = np.concatenate([xs[-1:], xs[:-1]]), np.concatenate([ys[-1:], ys[:-1]])  # edges from the previous vertex
    inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h) & (ax >= 0) & (ax < w) & (ay >= 0) & (ay < h)
    fast = inside & (np.abs(ax - xs) <= 1) & (np.abs(ay - ys) <= 1)
    img[np.concatenate([ay[fast], ys[fast]]), np.concatenate([ax[fast], xs[fast]])] = col
    for i in np.flatnonzero(~fast).tolist():
        _line8(img, (int(ax[i]), int(ay[i])), (int(xs[i]), int(ys[i])), col)
    return bounds


@functools.lru_cache(maxsize=16)
def _disc(radius: int) -> np.ndarray:
    """The pixels OpenCV's filled Bresenham circle covers around (0, 0): a (2r+1)^2 boolean stamp.

    cv::Circle fills horizontal spans centred on the centre, row by row; the tests in its loop
    only skip spans wholly outside the image, so the covered pixels are the same stamp wherever
    the centre is, clipped to the image.
    """
    stamp = np.zeros((2 * radius + 1, 2 * radius + 1), dtype=bool)
    err, dx, dy, plus, minus = 0, radius, 0, 1, (radius << 1) - 1
    while dx >= dy:
        stamp[radius - dy, radius - dx:radius + dx + 1] = stamp[radius + dy, radius - dx:radius + dx + 1] = True
        stamp[radius - dx, radius - dy:radius + dy + 1] = stamp[radius + dx, radius - dy:radius + dy + 1] = True
        dy += 1
        err += plus
        plus += 2
        mask = 0 if err <= 0 else -1
        err -= minus & mask
        dx += mask
        minus -= mask & 2
    return stamp


def circle_filled(img: np.ndarray, center: tuple[int, int], radius: int, color: Sequence[int]) -> None:
    """cv2.circle(img, center, radius, color, thickness=-1) with LINE_8 (OpenCV's Bresenham circle)."""
    h, w = img.shape[:2]
    cx, cy = center
    x0, y0, x1, y1 = max(cx - radius, 0), max(cy - radius, 0), min(cx + radius + 1, w), min(cy + radius + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    stamp = _disc(radius)[y0 - (cy - radius):y1 - (cy - radius), x0 - (cx - radius):x1 - (cx - radius)]
    img[y0:y1, x0:x1][stamp] = np.asarray(color, dtype=img.dtype)


def thick_line(img: np.ndarray, pt0: tuple[int, int], pt1: tuple[int, int], color: Sequence[int], thickness: int) -> None:
    """cv2.line(img, pt0, pt1, color, thickness) for thickness > 1, LINE_8 (polygon + round caps)."""
    p0 = (pt0[0] << _XY_SHIFT, pt0[1] << _XY_SHIFT)
    p1 = (pt1[0] << _XY_SHIFT, pt1[1] << _XY_SHIFT)
    dx = (p0[0] - p1[0]) / _XY_ONE
    dy = (p1[1] - p0[1]) / _XY_ONE
    r = dx * dx + dy * dy
    odd = thickness & 1
    thickness <<= _XY_SHIFT - 1
    if abs(r) > 2.220446049250313e-16:
        r = (thickness + odd * _XY_ONE * 0.5) / math.sqrt(r)
        dpx, dpy = _cv_round(dy * r), _cv_round(dx * r)
        poly = [
            (p0[0] + dpx, p0[1] + dpy),
            (p0[0] - dpx, p0[1] - dpy),
            (p1[0] - dpx, p1[1] - dpy),
            (p1[0] + dpx, p1[1] + dpy),
        ]
        fill_convex_poly(img, poly, color, shift=_XY_SHIFT)
    radius = (thickness + (_XY_ONE >> 1)) >> _XY_SHIFT
    for p in (p0, p1):
        center = ((p[0] + (_XY_ONE >> 1)) >> _XY_SHIFT, (p[1] + (_XY_ONE >> 1)) >> _XY_SHIFT)
        circle_filled(img, center, radius, color)


# --- controlnet-aux's drawings -----------------------------------------------------


def draw_bodypose(canvas: np.ndarray, keypoints: Sequence[Point | None]) -> np.ndarray:
    """controlnet_aux.open_pose.util.draw_bodypose: 18 COCO keypoints, normalized, None = not visible."""
    H, W = canvas.shape[:2]
    for (k1, k2), color in zip(LIMB_SEQ, COLORS):
        a, b = keypoints[k1 - 1], keypoints[k2 - 1]
        if a is None or b is None:
            continue
        Y = np.array([a[0], b[0]]) * float(W)
        X = np.array([a[1], b[1]]) * float(H)
        mX, mY = np.mean(X), np.mean(Y)
        length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
        polygon = ellipse2poly((int(mY), int(mX)), (int(length / 2), STICK_WIDTH), int(angle))
        fill_convex_poly(canvas, polygon, [int(float(c) * 0.6) for c in color])
    for keypoint, color in zip(keypoints, COLORS):
        if keypoint is None:
            continue
        circle_filled(canvas, (int(keypoint[0] * W), int(keypoint[1] * H)), 4, color)
    return canvas


def _hsv_color(h: float) -> tuple[int, int, int]:
    """matplotlib.colors.hsv_to_rgb([h, 1, 1]) * 255, as OpenCV rounds it to uint8."""
    i = int(h * 6.0)
    f = h * 6.0 - i
    # matplotlib's expressions with s = v = 1, kept as written: 1 - (1 - f) is not always f in floats.
    q, t = 1.0 * (1.0 - 1.0 * f), 1.0 * (1.0 - 1.0 * (1.0 - f))
    rgb = ((1.0, t, 0.0), (q, 1.0, 0.0), (0.0, 1.0, t), (0.0, q, 1.0), (t, 0.0, 1.0), (1.0, 0.0, q))[i % 6]
    return tuple(min(255, max(0, _cv_round(c * 255))) for c in rgb)  # type: ignore[return-value]


def draw_handpose(canvas: np.ndarray, keypoints: Sequence[Point | None] | None) -> np.ndarray:
    """controlnet_aux.open_pose.util.draw_handpose: 21 hand keypoints, normalized; None = not visible."""
    if not keypoints:
        return canvas
    H, W = canvas.shape[:2]
    pts = [(int(k[0] * W), int(k[1] * H)) if k is not None else (0, 0) for k in keypoints]
    for ie, (e1, e2) in enumerate(HAND_EDGES):
        (x1, y1), (x2, y2) = pts[e1], pts[e2]
        if x1 > _EPS and y1 > _EPS and x2 > _EPS and y2 > _EPS:
            thick_line(canvas, (x1, y1), (x2, y2), _hsv_color(ie / float(len(HAND_EDGES))), 2)
    for x, y in pts:
        if x > _EPS and y > _EPS:
            circle_filled(canvas, (x, y), 4, (0, 0, 255))
    return canvas


def draw_people(
    height: int,
    width: int,
    people: Sequence[tuple[Sequence[Point | None], Sequence[Point | None] | None, Sequence[Point | None] | None]],
) -> np.ndarray:
    """controlnet-aux's `draw_poses` (body, then left hand, then right hand per person) on black: uint8 (H, W, 3)."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for body, left, right in people:
        draw_bodypose(canvas, body)
        draw_handpose(canvas, left)
        draw_handpose(canvas, right)
    return canvas
