"""Generation resolution from the scene's output aspect and a long-edge setting. Plain Python (attribute reads)."""

from __future__ import annotations

from typing import Any

MIN_EDGE = 64  # the engine's smallest frame side (8 latent pixels)


def generation_size(
    resolution_x: int, resolution_y: int, pixel_aspect_x: float, pixel_aspect_y: float, long_edge: int,
    multiple: int = 8,
) -> tuple[int, int]:
    """(width, height) with the scene's display aspect, the long edge given, both multiples of ``multiple``.

    Diffusion models work on latents 8× smaller than the image, so sizes are
    rounded to the nearest multiple of 8 (never below 8); Flux packs 2×2 latents
    into one token, so its sides are multiples of 16 (core/jobs/families.py).
    """
    if resolution_x <= 0 or resolution_y <= 0:
        raise ValueError(f"resolution must be positive, got {resolution_x}×{resolution_y}")
    if long_edge < 8:
        raise ValueError(f"long_edge must be at least 8, got {long_edge}")
    width = resolution_x * pixel_aspect_x
    height = resolution_y * pixel_aspect_y
    scale = long_edge / max(width, height)

    def snap(value: float) -> int:
        return max(multiple, int(round(value * scale / multiple)) * multiple)

    return snap(width), snap(height)


def scene_size(scene: Any, long_edge: int | None = None) -> tuple[int, int]:
    """The frames' (width, height) for a scene: its output aspect at Long Edge (or ``long_edge``).

    The one computation generation, the control maps and the panel's readout share.
    """
    from ..jobs.families import SIDE_MULTIPLE, request_name

    render = scene.render
    edge = scene.viewfinder.long_edge if long_edge is None else long_edge
    return generation_size(render.resolution_x, render.resolution_y, render.pixel_aspect_x, render.pixel_aspect_y,
                           edge, SIDE_MULTIPLE[request_name(scene.viewfinder)])


def smallest_long_edge(scene: Any) -> int:
    """The smallest Long Edge from the scene's own that gives both sides at least MIN_EDGE pixels."""
    start = max(8, scene.viewfinder.long_edge)
    return next((edge for edge in range(start, 16 * MIN_EDGE * 8, 8) if min(scene_size(scene, edge)) >= MIN_EDGE),
                16 * MIN_EDGE * 8)
