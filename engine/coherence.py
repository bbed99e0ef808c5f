"""Coherence strategies: how the frames of a shot are ordered, batched, seeded and linked.

``INDEPENDENT`` seeds every frame with the shot seed and runs frames in batches.
``FLOW`` runs frames one at a time in timeline order: frame N starts from generated frame
N-1 warped along the exact backward flow (``engine/flow.py``), img2img at ``strength``;
the pixels the warp cannot carry (disoccluded, entering the frame, background) are
regenerated freely while carried ones are held to the warp for part of the denoising
(latent blending), and colour is matched to the shot's first frame. Keyframes (a frame
generated from noise, as INDEPENDENT would) start the shot, every ``keyframe_interval``
frames, after a gap, where flow or depth is missing, and at cuts detected from the
occlusion statistics. The method and the figures that chose it: engine/COHERENCE.md.

Each FLOW frame's cache key chains the previous frame's key, so a changed frame
invalidates the rest of the shot and a resumed job continues after the last cached one:
the previous frame is read back from the cache, never kept for the whole shot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from .flow import FlowMasks, depth_offset, flow_masks, warp
from .schema import CoherenceSpec, FrameSpec

logger = logging.getLogger(__name__)


class CoherenceStrategy(Protocol):
    sequential: bool

    def order(self, frames: Sequence[FrameSpec]) -> list[FrameSpec]:
        """The order frames are generated in, which is also the order cache keys chain in."""

    def cache_inputs(self, frame: FrameSpec, previous_key: str | None) -> dict[str, Any]:
        """Extra per-frame inputs of the cache key beyond maps, prompts and settings."""

    def batches(self, frames: Sequence[FrameSpec], batch_size: int,
                group: Callable[[FrameSpec], tuple[str, ...]]) -> Iterator[list[FrameSpec]]:
        """Frames to run together; every frame of a batch has the same ``group``."""

    def seeds(self, batch: Sequence[FrameSpec], shot_seed: int) -> list[int]:
        """One seed per frame of ``batch``."""


class IndependentCoherence:
    """Every frame on its own, all with the shot seed: stable noise, no temporal link."""

    sequential = False

    def __init__(self, spec: CoherenceSpec) -> None:
        self.spec = spec

    def order(self, frames: Sequence[FrameSpec]) -> list[FrameSpec]:
        return list(frames)

    def cache_inputs(self, frame: FrameSpec, previous_key: str | None = None) -> dict[str, Any]:
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


@dataclass(frozen=True)
class FlowMethod:
    """The parts of FLOW chosen by measurement (benchmarks/bench_coherence.py, COHERENCE.md)."""

    # Fraction of the denoising steps during which carried pixels are held to the
    # warped frame (latent blending); 0 = plain img2img from the warped frame.
    keep_until: float = 0.0
    # Weight of the warped frame on carried pixels after decoding; 0 = none.
    paste: float = 0.0
    # Per-channel mean/std of every frame matched to the shot's first frame.
    color_match: bool = True
    # Marks grow by this many pixels (generated edges are soft).
    radius: int = 1
    # Below this share of carried pixels, frame N-1 does not explain frame N: a cut.
    cut_fraction: float = 0.5


# Chosen in COHERENCE.md. The benchmark swaps it in-process to compare variants; it is
# part of every FLOW cache key, so variants never share cached frames.
FLOW_METHOD = FlowMethod(keep_until=1.0, paste=0.75, color_match=True)


@dataclass
class ColorStats:
    mean: np.ndarray
    std: np.ndarray


def color_stats(image: np.ndarray) -> ColorStats:
    pixels = image.reshape(-1, image.shape[-1]).astype(np.float32)
    return ColorStats(pixels.mean(axis=0), pixels.std(axis=0))


def match_color(image: np.ndarray, anchor: ColorStats) -> np.ndarray:
    """Per-channel mean/std transfer to ``anchor``: keeps colour from drifting over a long shot."""
    own = color_stats(image)
    scale = anchor.std / np.maximum(own.std, 1e-3)
    out = (image.astype(np.float32) - own.mean) * scale + anchor.mean
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass
class Carried:
    """The previous generated frame warped into this frame, and what the warp could not carry."""

    warped: np.ndarray  # H x W x 3 uint8
    masks: FlowMasks


class FlowCoherence:
    """Frame N from generated frame N-1 warped along the exact flow; see the module docstring."""

    sequential = True

    def __init__(self, spec: CoherenceSpec, method: FlowMethod | None = None) -> None:
        self.spec = spec
        self.method = method or FLOW_METHOD
        near, far = spec.depth_range if spec.depth_range else (None, None)
        self.offset = depth_offset(near, far)

    def order(self, frames: Sequence[FrameSpec]) -> list[FrameSpec]:
        return sorted(frames, key=lambda f: f.frame)

    def cache_inputs(self, frame: FrameSpec, previous_key: str | None) -> dict[str, Any]:
        return {"flow": frame.flow, "previous": previous_key, "flow_method": asdict(self.method)}

    def batches(self, frames: Sequence[FrameSpec], batch_size: int,
                group: Callable[[FrameSpec], tuple[str, ...]]) -> Iterator[list[FrameSpec]]:
        # Frame N needs frame N-1 finished: batches of one, in order.
        for frame in self.order(frames):
            yield [frame]

    def seeds(self, batch: Sequence[FrameSpec], shot_seed: int) -> list[int]:
        return [shot_seed] * len(batch)

    def keyframe_reason(self, index: int, frame: FrameSpec, previous: FrameSpec | None) -> str | None:
        """Why frame number ``index`` of the shot starts from noise, or None when it is carried."""
        if previous is None:
            return "first frame"
        interval = self.spec.keyframe_interval
        if interval and index % interval == 0:
            return f"keyframe interval {interval}"
        if previous.frame != frame.frame - 1:
            return f"gap after frame {previous.frame}"
        if frame.flow is None:
            return "no flow map"
        if frame.depth is None or previous.depth is None:
            return "no depth map to check occlusions"
        return None

    def carry(self, previous_image: np.ndarray, flow: np.ndarray, depth_prev: np.ndarray,
              depth_cur: np.ndarray) -> Carried:
        masks = flow_masks(depth_prev, depth_cur, flow, offset=self.offset, radius=self.method.radius)
        warped, _ = warp(previous_image.astype(np.float32), flow)
        return Carried(np.clip(np.rint(warped), 0, 255).astype(np.uint8), masks)

    def is_cut(self, carried: Carried) -> bool:
        return carried.masks.carried_fraction() < self.method.cut_fraction

    def finish(self, generated: np.ndarray, carried: Carried | None, anchor: ColorStats | None) -> np.ndarray:
        """The frame as saved: colour matched to the shot's first frame, warped pixels pasted back."""
        out = generated
        if self.method.color_match and anchor is not None:
            out = match_color(out, anchor)
        if carried is not None and self.method.paste > 0.0:
            weight = self.method.paste * carried.masks.valid[..., None].astype(np.float32)
            out = np.rint(weight * carried.warped + (1.0 - weight) * out).astype(np.uint8)
        return out


def make_strategy(spec: CoherenceSpec) -> CoherenceStrategy:
    if spec.mode == "INDEPENDENT":
        return IndependentCoherence(spec)
    if spec.mode == "FLOW":
        return FlowCoherence(spec)
    raise ValueError(f"coherence.mode {spec.mode!r} is not implemented; use 'INDEPENDENT' or 'FLOW'")
