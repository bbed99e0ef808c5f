"""Per-frame values: prompt travel and animated settings (F-curves in Blender).

A frame may carry its own ``prompt_weights`` (one weight per ``prompt_keys`` entry),
``depth_weight``, ``pose_weight``, ``control_start``, ``control_end``,
``guidance_scale``, ``strength`` (FLOW) and ``seed``; an absent field is the job's
value. ``frame_values`` resolves them into one ``FrameValues`` per frame, which
decides three things:

- the frame's cache key (``cache_inputs``): a frame whose values did not change keeps
  its key, so editing a curve over frames 30-40 regenerates only those frames (under
  FLOW the keys chain, so also the frames after them);
- its batch (``batch_group``): frames batch together when everything the pipeline
  takes once per call is equal; prompt blends and seeds may differ inside a batch
  (one embedding row and one generator per frame);
- its prompt: a plain prompt string when one key (or the shot prompt) is active, so
  such a frame is byte-identical to a shot generated with that prompt alone; a blend
  of text embeddings (``engine/models/prompt_blend.py``) when several keys are active.

Plain Python (no torch): used on the HTTP thread at submit and on the worker thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .schema import FrameSpec, JobRequest

logger = logging.getLogger(__name__)

# Weights below this share of the frame's total are left out of the blend: a key
# that faded out to 1e-7 by float noise must not change the frame's cache key.
MIN_SHARE = 1e-6


@dataclass(frozen=True)
class FrameValues:
    """Everything a frame is generated with beyond its control maps."""

    prompt: str  # the prompt string (plain path), or "" when ``blend`` is set
    blend: tuple[tuple[str, float], ...] | None  # (prompt as the model sees it, share), shares sum to 1
    depth_weight: float
    pose_weight: float
    control_start: float
    control_end: float
    guidance_scale: float
    strength: float
    seed: int
    fallback: bool = False  # prompt keys were sent but all weights are 0: the shot prompt

    def cache_inputs(self) -> dict[str, Any]:
        """The frame's part of its cache key: the same names the job-level key has always used."""
        return {
            "prompt": self.prompt if self.blend is None else {"blend": [list(pair) for pair in self.blend]},
            "seed": self.seed, "guidance_scale": self.guidance_scale,
            "depth_weight": self.depth_weight, "pose_weight": self.pose_weight,
            "control_start": self.control_start, "control_end": self.control_end,
        }

    def batch_group(self) -> tuple[Any, ...]:
        """Frames with equal groups may share one pipeline call."""
        return (self.prompt if self.blend is None else None, self.blend is not None, self.depth_weight,
                self.pose_weight, self.control_start, self.control_end, self.guidance_scale)


def frame_values(request: JobRequest, frame: FrameSpec) -> FrameValues:
    """The values ``frame`` is generated with: its own where it has them, else the job's."""

    def pick(name: str) -> Any:
        own = getattr(frame, name)
        return getattr(request, name) if own is None else own

    strength = frame.strength if frame.strength is not None else request.coherence.strength
    prompt, blend, fallback = _prompt_of(request, frame)
    return FrameValues(
        prompt=prompt, blend=blend, depth_weight=pick("depth_weight"), pose_weight=pick("pose_weight"),
        control_start=pick("control_start"), control_end=pick("control_end"),
        guidance_scale=pick("guidance_scale"), strength=strength, seed=pick("seed"), fallback=fallback,
    )


def _prompt_of(request: JobRequest, frame: FrameSpec) -> tuple[str, tuple[tuple[str, float], ...] | None, bool]:
    """(plain prompt, blend, fell back): a single active key is a plain prompt, not a blend."""
    weights = frame.prompt_weights
    if weights is None or not request.prompt_keys:
        return request.full_prompt(), None, False
    total = float(sum(weights))
    if total <= 0.0:
        return request.full_prompt(), None, True
    # Equal prompts (after the constant text is appended) add up: one embedding each.
    shares: dict[str, float] = {}
    for text, weight in zip(request.prompt_keys, weights, strict=True):
        if weight / total >= MIN_SHARE:
            full = request.keyed_prompt(text)
            shares[full] = shares.get(full, 0.0) + weight / total
    if len(shares) == 1:
        return next(iter(shares)), None, False
    # Rounded so that float noise in the weights does not change the cache key.
    return "", tuple((text, round(share, 6)) for text, share in shares.items()), False


def zero_weight_frames(request: JobRequest) -> list[int]:
    """Frames whose prompt weights are all 0: they fall back to the shot prompt."""
    if not request.prompt_keys:
        return []
    return sorted(f.frame for f in request.frames if f.prompt_weights is not None and sum(f.prompt_weights) <= 0.0)


def describe_frames(frames: list[int]) -> str:
    """'3-5, 9' for [3, 4, 5, 9]: warnings name frames without listing a whole shot."""
    runs: list[str] = []
    start = previous = None
    for number in sorted(frames):
        if previous is not None and number == previous + 1:
            previous = number
            continue
        if start is not None:
            runs.append(f"{start}" if start == previous else f"{start}-{previous}")
        start = previous = number
    if start is not None:
        runs.append(f"{start}" if start == previous else f"{start}-{previous}")
    return ", ".join(runs)


def job_warnings(request: JobRequest) -> list[str]:
    """What the user should hear about the per-frame values, named by frame."""
    warnings: list[str] = []
    zero = zero_weight_frames(request)
    if zero:
        warnings.append(f"frames {describe_frames(zero)}: every prompt key's weight is 0, so these frames use the "
                        "shot prompt; key a weight above 0 there to keep the prompt travel going")
    return warnings
