"""Coherence strategies: how the frames of a shot are ordered, batched, seeded and linked.

``INDEPENDENT`` seeds every frame with the shot seed and runs frames in batches.
``FLOW`` runs frames one at a time in timeline order: frame N starts from generated frame
N-1 warped along the exact backward flow (``engine/coherence/flow.py``), img2img at ``strength``;
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
from typing import Any

import numpy as np

from ..contract.schema import CoherenceSpec, FrameSpec
from .flow import FlowMasks, area_scale, depth_offset, flow_masks, warp

logger = logging.getLogger(__name__)


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
    # Sharp FLOW (COHERENCE.md, "Sharp FLOW"). Resampling of the carried frame: "linear"
    # (bilinear) or "cubic" (Catmull-Rom, loses far less detail per warp).
    resample: str = "linear"
    # Detail split: 0 = off; else carried pixels take their low frequencies (a triangle
    # low-pass of this radius) from the paste mix and their high frequencies from
    # ``detail`` below, so pasting no longer averages detail away.
    split_radius: int = 0
    # Share of the high band's energy taken from the newly generated frame (re-injected
    # detail); the rest comes from the warped frame, mixed so that energies add up to 1.
    fresh_detail: float = 0.0
    # High band of carried pixels scaled (up only, at most 2x) to the first frame's level.
    detail_match: bool = False
    # Paste weight lowered where the warp stretches frame N-1 (``flow.area_scale`` < 1).
    stretch_paste: bool = False


# The method before "Sharp FLOW": bilinear warp, plain paste. Its detail fades along the shot.
BLURRY_FLOW_METHOD = FlowMethod(keep_until=1.0, paste=0.75, color_match=True)
# Chosen in COHERENCE.md. The benchmark swaps it in-process to compare variants; it is
# part of every FLOW cache key, so variants never share cached frames.
FLOW_METHOD = FlowMethod(keep_until=1.0, paste=0.75, color_match=True, resample="cubic", split_radius=2,
                         fresh_detail=0.05, detail_match=True)


# Low-pass radius of the detail split and of the anchor's detail level.
DETAIL_RADIUS = 2


@dataclass
class ColorStats:
    mean: np.ndarray
    std: np.ndarray
    # RMS of the high band (``high_band``) of the anchor frame: the detail level FLOW keeps.
    detail: float = 0.0


def color_stats(image: np.ndarray) -> ColorStats:
    pixels = image.reshape(-1, image.shape[-1]).astype(np.float32)
    detail = float(np.sqrt(np.mean(high_band(image.astype(np.float32), DETAIL_RADIUS) ** 2)))
    return ColorStats(pixels.mean(axis=0), pixels.std(axis=0), detail)


def _box(image: np.ndarray, radius: int, axis: int) -> np.ndarray:
    pad = [(0, 0)] * image.ndim
    pad[axis] = (radius + 1, radius)
    csum = np.cumsum(np.pad(image, pad, mode="edge"), axis=axis)
    size = image.shape[axis]
    k = 2 * radius + 1
    return (np.take(csum, np.arange(k, k + size), axis=axis) - np.take(csum, np.arange(size), axis=axis)) / k


def low_pass(image: np.ndarray, radius: int) -> np.ndarray:
    """Two box filters of ``radius`` along each axis: a triangle filter, whose response is never negative."""
    out = image.astype(np.float32)
    for _ in range(2):
        out = _box(_box(out, radius, 0), radius, 1)
    return out


def high_band(image: np.ndarray, radius: int) -> np.ndarray:
    return image.astype(np.float32) - low_pass(image, radius)


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
    area: np.ndarray | None = None  # flow.area_scale, when the method lowers the paste where the warp stretches


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
        warped, _ = warp(previous_image.astype(np.float32), flow, order=self.method.resample)
        scale = area_scale(flow) if self.method.stretch_paste else None
        return Carried(np.clip(np.rint(warped), 0, 255).astype(np.uint8), masks, scale)

    def is_cut(self, carried: Carried) -> bool:
        return carried.masks.carried_fraction() < self.method.cut_fraction

    def finish(self, generated: np.ndarray, carried: Carried | None, anchor: ColorStats | None) -> np.ndarray:
        """The frame as saved: colour matched to the shot's first frame, warped pixels pasted back."""
        out = generated
        if self.method.color_match and anchor is not None:
            out = match_color(out, anchor)
        if carried is not None and self.method.paste > 0.0:
            weight = self.method.paste * carried.masks.valid[..., None].astype(np.float32)
            if carried.area is not None:
                weight = weight * np.clip(carried.area, 0.0, 1.0)[..., None]
            if self.method.split_radius <= 0:
                return np.rint(weight * carried.warped + (1.0 - weight) * out).astype(np.uint8)
            out = self._split_paste(out, carried, weight, anchor)
        return out

    def _split_paste(self, generated: np.ndarray, carried: Carried, weight: np.ndarray,
                     anchor: ColorStats | None) -> np.ndarray:
        """Carried pixels: low band pasted at ``weight``, high band from the warped and generated frames.

        Averaging two frames whose fine detail does not line up (the generated one and the
        warped one) cancels that detail; repeated over a shot it is the blur FLOW showed.
        Mixing the high bands as a*warped + b*generated with a^2 + b^2 = 1 keeps their
        energy instead; ``detail_match`` then restores what the resampling lost, up to the
        first frame's level.
        """
        radius = self.method.split_radius
        warped = carried.warped.astype(np.float32)
        gen = generated.astype(np.float32)
        mixed = weight * warped + (1.0 - weight) * gen
        fresh = float(np.clip(self.method.fresh_detail, 0.0, 1.0))
        detail = np.sqrt(1.0 - fresh) * high_band(warped, radius) + np.sqrt(fresh) * high_band(gen, radius)
        valid = carried.masks.valid
        if self.method.detail_match and anchor is not None and anchor.detail > 0 and valid.any():
            level = float(np.sqrt(np.mean(detail[valid] ** 2)))
            detail *= float(np.clip(anchor.detail / max(level, 1e-3), 1.0, 2.0))
        result = np.where(valid[..., None], low_pass(mixed, radius) + detail, gen)
        return np.clip(np.rint(result), 0, 255).astype(np.uint8)


# INDEPENDENT or FLOW: both give the generation order and a frame's cache inputs; the engine's run
# functions (engine/jobs/batch.py, engine/jobs/flow.py) batch INDEPENDENT frames and run FLOW frames shot by shot.
CoherenceStrategy = IndependentCoherence | FlowCoherence


def make_strategy(spec: CoherenceSpec) -> CoherenceStrategy:
    if spec.mode == "INDEPENDENT":
        return IndependentCoherence(spec)
    if spec.mode == "FLOW":
        return FlowCoherence(spec)
    raise ValueError(f"coherence.mode {spec.mode!r} is not implemented; use 'INDEPENDENT' or 'FLOW'")
