"""Line-art control maps from geometry: white lines one pixel wide on black, 8-bit grayscale.

A line is drawn between two neighbouring pixels (left/right, top/bottom) when
- they show different objects, or geometry and background (the Object Index pass): outlines;
- they show the same object but not the same surface: the farther pixel lies off the nearer
  pixel's tangent plane (and the other way round) by more than DEPTH_STEP pixel footprints
  and by more than half the distance between them (self-occlusion; a surface seen at a
  grazing angle stays one surface);
- their normals differ by more than the crease angle (creases; smooth-shaded meshes have none
  where their shading is smooth, so a sphere gets only its outline).
The line goes on the nearer pixel of the pair (the occluder's edge), so it is one pixel wide
and within a pixel of the projected edge. No filter ever looks at shading: the passes are
Z, Normal and Object Index of the data-pass render (render.py).

Forms (meta.json "lineart.form"; the engine feeds the image to the net the add-on names):
- "canny": the 1-pixel lines as they are (what Canny's thin edges look like);
- "lineart": the lines drawn `line_weight` pixels wide (a disk brush);
- "mlsd": straight segments only, fitted to the lines (mlsd.py), drawn `line_weight` wide.

Positions come from Z and the camera's projection (`CameraRays`), so orthographic cameras
get the same tests as perspective ones.

Plain numpy; runs on any thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMS = ("lineart", "canny", "mlsd")
# A surface step larger than this many pixel footprints (and half the step's length) is a depth edge.
DEPTH_STEP = 3.0
DEPTH_SHARE = 0.5
DEFAULT_CREASE_DEG = 30.0


@dataclass(frozen=True)
class CameraRays:
    """Pixel (column u, row v from the top) + Z -> camera-space position, from the projection matrix.

    Perspective: X = z (a_x (u + 0.5) + b_x), Y = z (a_y (v + 0.5) + b_y), Z = -z.
    Orthographic: X = a_x (u + 0.5) + b_x, Y = a_y (v + 0.5) + b_y, Z = -z.
    `footprint` is a pixel's size in scene units at z = 1 (perspective) or anywhere (orthographic).
    """

    ortho: bool
    ax: float
    bx: float
    ay: float
    by: float
    footprint: float

    @classmethod
    def from_projection(cls, projection: np.ndarray, width: int, height: int) -> CameraRays:
        """From Blender's `camera.calc_matrix_camera(depsgraph, x=width, y=height)` (OpenGL clip space)."""
        p = np.asarray(projection, dtype=np.float64)
        ortho = abs(p[3, 3]) > 0.5  # perspective matrices have w = -Z, orthographic ones w = 1
        # ndc_x = 2 (u + 0.5) / W - 1, ndc_y = 1 - 2 (v + 0.5) / H
        if ortho:
            ax, bx = 2.0 / (width * p[0, 0]), (-1.0 - p[0, 3]) / p[0, 0]
            ay, by = -2.0 / (height * p[1, 1]), (1.0 - p[1, 3]) / p[1, 1]
        else:
            ax, bx = 2.0 / (width * p[0, 0]), (-1.0 + p[0, 2]) / p[0, 0]
            ay, by = -2.0 / (height * p[1, 1]), (1.0 + p[1, 2]) / p[1, 1]
        return cls(bool(ortho), ax, bx, ay, by, float(abs(ax)))

    def positions(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Camera-space X, Y, Z (each H x W, float32) of a Z pass (background pixels hold garbage; mask them)."""
        h, w = z.shape
        z = z.astype(np.float32, copy=False)
        x = ((np.arange(w) + 0.5) * self.ax + self.bx).astype(np.float32)
        y = ((np.arange(h) + 0.5) * self.ay + self.by).astype(np.float32)
        if self.ortho:
            return np.broadcast_to(x[None, :], (h, w)), np.broadcast_to(y[:, None], (h, w)), -z
        return z * x[None, :], z * y[:, None], -z

    def footprints(self, z: np.ndarray) -> np.ndarray | float:
        return self.footprint if self.ortho else z * np.float32(self.footprint)


def _pair(a: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The two sides of every neighbour pair along the image `axis` (0: top/bottom, 1: left/right); a
    leading channel axis (3, H, W) is kept."""
    if a.ndim == 3:
        return (a[:, :-1], a[:, 1:]) if axis == 0 else (a[:, :, :-1], a[:, :, 1:])
    return (a[:-1], a[1:]) if axis == 0 else (a[:, :-1], a[:, 1:])


def _dot(n: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    return n[0] * x + n[1] * y + n[2] * z


def _depth_steps(pairs: list[tuple[np.ndarray, np.ndarray]], normals: tuple[np.ndarray, np.ndarray],
                 foot: np.ndarray | float) -> np.ndarray:
    """Which of the given neighbour pairs (positions X, Y, Z of each side, already picked) are depth steps."""
    (xa, xb), (ya, yb), (za, zb) = pairs
    dx, dy, dz = xb - xa, yb - ya, zb - za
    na, nb = normals
    off_plane = np.maximum(np.abs(_dot(na, dx, dy, dz)), np.abs(_dot(nb, dx, dy, dz)))
    return off_plane > np.maximum(DEPTH_STEP * foot, DEPTH_SHARE * np.sqrt(dx * dx + dy * dy + dz * dz))


def edge_pixels(index: np.ndarray, z: np.ndarray, normals: np.ndarray, rays: CameraRays,
                crease_deg: float = DEFAULT_CREASE_DEG) -> np.ndarray:
    """(H, W) bool: the 1-pixel lines (outlines, depth steps, creases), each on the nearer pixel of its pair.

    ``normals``: (3, H, W) camera-space unit normals. float32 throughout, and the tangent-plane test
    only where the depth changes by more than a pixel footprint between the two pixels (elsewhere
    the step is under DEPTH_STEP footprints for any lens up to a 100-degree field of view): this
    runs on every frame of every shot with line art.
    """
    hit = index > 0
    depth = np.where(hit, z, np.inf).astype(np.float32)
    zero = np.where(hit, z, 0.0).astype(np.float32)
    points = rays.positions(zero)
    feet = rays.footprints(zero)
    cos_crease = np.float32(np.cos(np.radians(crease_deg)))
    lines = np.zeros(index.shape, dtype=bool)
    for axis in (0, 1):
        ia, ib = _pair(index, axis)
        na, nb = _pair(normals, axis)
        da, db = _pair(depth, axis)
        foot = feet if np.isscalar(feet) else np.minimum(*_pair(feet, axis))
        edge = ia != ib
        same = ~edge & (ia > 0)
        edge |= same & (_dot(na, nb[0], nb[1], nb[2]) < cos_crease)
        za, zb = _pair(zero, axis)
        maybe = same & ~edge & (np.abs(zb - za) > foot)
        if maybe.any():
            picked = [tuple(side[maybe] for side in _pair(p, axis)) for p in points]
            foot_picked = foot if np.isscalar(foot) else foot[maybe]
            edge[maybe] = _depth_steps(picked, (na[:, maybe], nb[:, maybe]), foot_picked)
        near_a = da <= db
        if axis == 0:
            lines[:-1] |= edge & near_a
            lines[1:] |= edge & ~near_a
        else:
            lines[:, :-1] |= edge & near_a
            lines[:, 1:] |= edge & ~near_a
    return lines


def brush(weight: int) -> list[tuple[int, int]]:
    """Pixel offsets of a round brush `weight` pixels across (1: the pixel itself)."""
    weight = max(1, int(weight))
    lo, hi = -((weight - 1) // 2), weight // 2
    centre = (lo + hi) / 2.0
    radius2 = (weight / 2.0) ** 2
    return [(dy, dx) for dy in range(lo, hi + 1) for dx in range(lo, hi + 1)
            if (dy - centre) ** 2 + (dx - centre) ** 2 <= radius2 + 1e-9]


def thicken(lines: np.ndarray, weight: int) -> np.ndarray:
    """The lines drawn with a round brush `weight` pixels across."""
    offsets = brush(weight)
    if len(offsets) == 1:
        return lines.copy()
    h, w = lines.shape
    out = np.zeros_like(lines)
    for dy, dx in offsets:
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] |= \
            lines[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def render_form(lines: np.ndarray, form: str, line_weight: int) -> np.ndarray:
    """The uint8 map (255 lines on 0) of the 1-pixel `lines` in one of FORMS."""
    if form == "canny":
        drawn = lines
    elif form == "mlsd":
        from .mlsd import draw_segments, straight_segments

        drawn = thicken(draw_segments(lines.shape, straight_segments(lines)), line_weight)
    elif form == "lineart":
        drawn = thicken(lines, line_weight)
    else:
        raise ValueError(f"line-art form must be one of {', '.join(FORMS)}, got {form!r}")
    return np.where(drawn, np.uint8(255), np.uint8(0))
