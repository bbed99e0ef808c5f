"""Coherence strategies: how the frames of a shot are ordered, batched and seeded.

``INDEPENDENT`` (implemented) seeds every frame with the shot seed and runs frames in
batches. A later ``FLOW`` mode (frame t guided by frame t-1 warped along the flow
map, img2img style) plugs in as another strategy: batches of one, in order, with the
previous frame's cache key in ``cache_inputs`` so a changed frame invalidates the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from .schema import CoherenceSpec, FrameSpec

logger = logging.getLogger(__name__)


class CoherenceStrategy(Protocol):
    def cache_inputs(self, frame: FrameSpec) -> dict[str, Any]:
        """Extra per-frame inputs of the cache key beyond maps, prompts and settings."""

    def batches(self, frames: Sequence[FrameSpec], batch_size: int,
                group: Callable[[FrameSpec], tuple[str, ...]]) -> Iterator[list[FrameSpec]]:
        """Frames to run together; every frame of a batch has the same ``group``."""

    def seeds(self, batch: Sequence[FrameSpec], shot_seed: int) -> list[int]:
        """One seed per frame of ``batch``."""


class IndependentCoherence:
    """Every frame on its own, all with the shot seed: stable noise, no temporal link."""

    def __init__(self, spec: CoherenceSpec) -> None:
        self.spec = spec

    def cache_inputs(self, frame: FrameSpec) -> dict[str, Any]:
        return {}

    def batches(self, frames: Sequence[FrameSpec], batch_size: int,
                group: Callable[[FrameSpec], tuple[str, ...]]) -> Iterator[list[FrameSpec]]:
        batch: list[FrameSpec] = []
        for frame in frames:
            if batch and (len(batch) >= batch_size or group(batch[0]) != group(frame)):
                yield batch
                batch = []
            batch.append(frame)
        if batch:
            yield batch

    def seeds(self, batch: Sequence[FrameSpec], shot_seed: int) -> list[int]:
        return [shot_seed] * len(batch)


def make_strategy(spec: CoherenceSpec) -> CoherenceStrategy:
    if spec.mode == "INDEPENDENT":
        return IndependentCoherence(spec)
    raise ValueError(f"coherence.mode {spec.mode!r} is not implemented; use 'INDEPENDENT'")
