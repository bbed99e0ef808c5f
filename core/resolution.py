"""Generation resolution from the scene's output aspect and a long-edge setting. Plain Python."""

from __future__ import annotations


def generation_size(
    resolution_x: int, resolution_y: int, pixel_aspect_x: float, pixel_aspect_y: float, long_edge: int
) -> tuple[int, int]:
    """(width, height) with the scene's display aspect, the long edge given, both multiples of 8.

    Diffusion models work on latents 8× smaller than the image, so sizes are
    rounded to the nearest multiple of 8 (never below 8).
    """
    if resolution_x <= 0 or resolution_y <= 0:
        raise ValueError(f"resolution must be positive, got {resolution_x}×{resolution_y}")
    if long_edge < 8:
        raise ValueError(f"long_edge must be at least 8, got {long_edge}")
    width = resolution_x * pixel_aspect_x
    height = resolution_y * pixel_aspect_y
    scale = long_edge / max(width, height)

    def snap(value: float) -> int:
        return max(8, int(round(value * scale / 8.0)) * 8)

    return snap(width), snap(height)
