"""What a toy-world frame shows, measured against the exact maps: silhouettes, colours, bleed.

Plain numpy/scipy (no torch): the toy-world benchmark and the tests that assert meaning read
frames with these functions. Images are (H, W, 3) uint8 sRGB; masks are the conditioning's
uint16 id masks; depth is the 16-bit depth PNG (0 where there is no geometry: the sky).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ...metrics.take import hf_energy

# A pixel further than this (RGB in 0..1, Euclidean) from every background colour is foreground.
FOREGROUND_DISTANCE = 0.16


def erode(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(mask, iterations=radius) if radius > 0 else mask.copy()


def dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=radius) if radius > 0 else mask.copy()


def _unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255.0


def _centres(pixels: np.ndarray, k: int, iterations: int = 8) -> np.ndarray:
    """k-means centres of (n, 3) colours (deterministic start: spread along luminance)."""
    if len(pixels) == 0:
        return np.zeros((0, 3))
    order = np.argsort(pixels.sum(axis=1))
    centres = pixels[order[np.linspace(0, len(order) - 1, k).astype(int)]].copy()
    for _ in range(iterations):
        labels = np.argmin(((pixels[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        for j in range(k):
            if np.any(labels == j):
                centres[j] = pixels[labels == j].mean(axis=0)
    return centres


def _segment_distance(rgb: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each pixel's distance to the nearest point on a segment between two centres (a centre itself
    included): a background pixel may mix two background colours (a tile's edge, a blurred border)."""
    best = np.full(rgb.shape[:-1], np.inf)
    for i in range(len(centres)):
        for j in range(i, len(centres)):
            a, b = centres[i], centres[j]
            ab = b - a
            denom = float(ab @ ab)
            t = np.clip(((rgb - a) @ ab) / denom, 0.0, 1.0)[..., None] if denom > 0 else 0.0
            best = np.minimum(best, np.sqrt((((a + t * ab) - rgb) ** 2).sum(-1)))
    return best


def foreground(image: np.ndarray, depth: np.ndarray, mask: np.ndarray, things: Iterable[int]) -> np.ndarray:
    """Pixels that are neither ground nor sky, judged by colour alone.

    The background's colours come from the frame itself, where the exact maps say there is
    background (sky: no geometry; ground: geometry that is none of ``things``' mask ids), kept
    2 pixels away from every thing: one colour for the sky, four for the ground (textures,
    shading). A pixel is background when it is near a mix of two of them.
    """
    rgb = _unit(image)
    is_thing = np.isin(mask, list(things))
    objects = dilate(is_thing, 2)
    sky = (depth == 0) & ~objects
    ground = (depth > 0) & ~is_thing & ~objects
    centres = [c for c in (_centres(rgb[sky], 1), _centres(rgb[ground], 4)) if len(c)]
    if not centres:
        return np.ones(mask.shape, bool)
    distance = _segment_distance(rgb, np.concatenate(centres))
    from scipy import ndimage

    return ndimage.median_filter((distance > FOREGROUND_DISTANCE).astype(np.uint8), size=3).astype(bool)


def object_ious(fg: np.ndarray, mask: np.ndarray, ids: Iterable[int]) -> dict[int, float]:
    """IoU of each object's exact mask with the foreground pixels nearest to it (a Voronoi split
    of the frame between objects, so a blob drawn beside an object counts against it).

    The one-pixel band along each mask's outline counts for neither side: at 64 pixels a
    silhouette is mostly outline, and anti-aliasing mixes colours there in the renders too.
    """
    from scipy import ndimage

    ids = [int(i) for i in ids]
    if not ids:
        return {}
    distances = np.stack([ndimage.distance_transform_edt(mask != i) for i in ids])
    nearest = np.asarray(ids)[np.argmin(distances, axis=0)]
    out = {}
    for i in ids:
        exact = mask == i
        band = dilate(exact, 1) & ~erode(exact, 1)
        drawn = fg & (nearest == i) & ~band
        inner = exact & ~band
        union = (inner | drawn).sum()
        out[i] = float((inner & drawn).sum() / union) if union else float("nan")
    return out


def mean_colour(image: np.ndarray, region: np.ndarray) -> np.ndarray | None:
    """Mean sRGB colour (0..1) of a region, its border left out (anti-aliasing mixes colours there)."""
    inner = erode(region, 1)
    if inner.sum() < 4:
        inner = region
    if inner.sum() == 0:
        return None
    return _unit(image)[inner].mean(axis=0)


def nearest(colour: np.ndarray, palette: Mapping[str, np.ndarray]) -> str:
    names = list(palette)
    return names[int(np.argmin([np.sum((colour - palette[n]) ** 2) for n in names]))]


def pixel_names(image: np.ndarray, palette: Mapping[str, np.ndarray]) -> np.ndarray:
    """The nearest palette colour's name index of every pixel."""
    ref = np.stack([palette[n] for n in palette])
    return np.argmin(((_unit(image)[..., None, :] - ref) ** 2).sum(-1), axis=-1)


@dataclass
class Bleed:
    """Two characters in one frame: does each take its own colour, and how much of the other's?"""

    own: bool
    other_fraction: float


def bleed(image: np.ndarray, region: np.ndarray, own: str, other: str, palette: Mapping[str, np.ndarray]) -> Bleed:
    names = list(palette)
    colour = mean_colour(image, region)
    inner = erode(region, 1) if erode(region, 1).sum() >= 4 else region
    labels = pixel_names(image, palette)[inner]
    return Bleed(own=colour is not None and nearest(colour, palette) == own,
                 other_fraction=float(np.mean(labels == names.index(other))) if labels.size else float("nan"))


def region_hf_energy(image: np.ndarray, region: np.ndarray) -> float:
    """High-frequency energy (engine.metrics.hf_energy) inside the bounding box of a region's interior."""
    inner = erode(region, 1)
    ys, xs = np.nonzero(inner)
    if len(ys) < 9:
        return float("nan")
    crop = image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return hf_energy(crop) if min(crop.shape[:2]) >= 3 else float("nan")
