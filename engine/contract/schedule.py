"""Per-frame values: prompt travel and animated settings (F-curves in Blender).

A frame may carry its own ``prompt_weights`` (one weight per ``prompt_keys`` entry),
``depth_weight``, ``pose_weight``, ``normal_weight``, ``lineart_weight``, ``seg_weight``,
``control_start``, ``control_end``, ``control_ranges`` (per map), ``guidance_scale``,
``strength`` (FLOW) and ``seed``; an absent field is the job's value. ``frame_values``
resolves them into one ``FrameValues`` per frame, which decides three things:

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
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .schema import MAP_KINDS

if TYPE_CHECKING:
    from .schema import FrameSpec, JobRequest

logger = logging.getLogger(__name__)

# Weights below this share of the frame's total are left out of the blend: a key
# that faded out to 1e-7 by float noise must not change the frame's cache key.
MIN_SHARE = 1e-6

# The issue-23 maps. Their nets are dropped on a frame whose weight for them is 0: the net would add
# exactly nothing (its residuals times 0), so the frame is the one made without the map, and keyed so.
# Depth and pose run at scale 0 as they always have, so their jobs' batches and keys stay as they were.
EXTRA_MAPS = ("normal", "lineart", "seg")


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
    normal_weight: float = 1.0
    lineart_weight: float = 1.0
    seg_weight: float = 1.0
    # (kind, start, end) of each map whose range is not (control_start, control_end): control_ranges.
    ranges: tuple[tuple[str, float, float], ...] = ()

    def weight(self, kind: str) -> float:
        """The conditioning scale of map ``kind`` on this frame."""
        return float(getattr(self, f"{kind}_weight"))

    def control_range(self, kind: str) -> tuple[float, float]:
        """The [start, end] share of the steps map ``kind``'s net acts on (the resolution order of
        ``frame_values``)."""
        for name, start, end in self.ranges:
            if name == kind:
                return start, end
        return self.control_start, self.control_end

    def cache_inputs(self, nets: Collection[str] = ()) -> dict[str, Any]:
        """The frame's part of its cache key: the same names the job-level key has always used.

        ``nets``: the maps the frame runs with (``frame_nets``). Only they add their own values (the
        new maps' weights, a range other than control_start/end), so a request without them keeps
        the keys it always had.
        """
        out: dict[str, Any] = {
            "prompt": self.prompt if self.blend is None else {"blend": [list(pair) for pair in self.blend]},
            "seed": self.seed, "guidance_scale": self.guidance_scale,
            "depth_weight": self.depth_weight, "pose_weight": self.pose_weight,
            "control_start": self.control_start, "control_end": self.control_end,
        }
        out.update({f"{kind}_weight": self.weight(kind) for kind in EXTRA_MAPS if kind in nets})
        ranges = {kind: [start, end] for kind, start, end in self.ranges if kind in nets}
        if ranges:
            out["control_ranges"] = ranges
        return out

    def batch_group(self) -> tuple[Any, ...]:
        """Frames with equal groups may share one pipeline call."""
        return (self.prompt if self.blend is None else None, self.blend is not None, self.depth_weight,
                self.pose_weight, self.control_start, self.control_end, self.guidance_scale,
                self.normal_weight, self.lineart_weight, self.seg_weight, self.ranges)


def frame_values(request: JobRequest, frame: FrameSpec) -> FrameValues:
    """The values ``frame`` is generated with: its own where it has them, else the job's."""

    def pick(name: str) -> Any:
        own = getattr(frame, name)
        return getattr(request, name) if own is None else own

    strength = frame.strength if frame.strength is not None else request.coherence.strength
    prompt, blend, fallback = _prompt_of(request, frame)
    start, end = pick("control_start"), pick("control_end")
    return FrameValues(
        prompt=prompt, blend=blend, depth_weight=pick("depth_weight"), pose_weight=pick("pose_weight"),
        control_start=start, control_end=end,
        guidance_scale=pick("guidance_scale"), strength=strength, seed=pick("seed"), fallback=fallback,
        normal_weight=pick("normal_weight"), lineart_weight=pick("lineart_weight"), seg_weight=pick("seg_weight"),
        ranges=_ranges_of(request, frame, (start, end)),
    )


def _ranges_of(request: JobRequest, frame: FrameSpec,
               default: tuple[float, float]) -> tuple[tuple[str, float, float], ...]:
    """Each map's range where it is not ``default``: frame.control_ranges[kind] >
    request.control_ranges[kind] > the frame's control_start/end (``default``, itself the frame's
    own or the job's). Ranges equal to the default are left out, so they key as before."""
    own = frame.control_ranges or {}
    out: list[tuple[str, float, float]] = []
    for kind in MAP_KINDS:
        chosen = own.get(kind)  # type: ignore[call-overload]
        if chosen is None:
            chosen = request.control_ranges.get(kind)  # type: ignore[call-overload]
        if chosen is not None and (float(chosen[0]), float(chosen[1])) != default:
            out.append((kind, float(chosen[0]), float(chosen[1])))
    return tuple(out)


def frame_nets(frame: FrameSpec, values: FrameValues, loaded: Collection[str]) -> tuple[str, ...]:
    """The ControlNets ``frame`` runs with, in NET_ORDER: those ``loaded`` whose map the frame carries
    (a frame with nobody in it has no pose map and runs without the pose net), the new maps only
    at a weight above 0 (``EXTRA_MAPS``)."""
    return tuple(kind for kind in MAP_KINDS
                 if kind in loaded and getattr(frame, kind) is not None
                 and (kind not in EXTRA_MAPS or values.weight(kind) > 0.0))


def job_extra_maps(request: JobRequest) -> tuple[str, ...]:
    """The new maps (``EXTRA_MAPS``) some frame of the job runs with: only their nets are resolved and
    loaded, so a depth+pose job's pipeline is the one it always was."""
    used = {kind for frame in request.frames
            for kind in frame_nets(frame, frame_values(request, frame), EXTRA_MAPS)}
    return tuple(kind for kind in EXTRA_MAPS if kind in used)


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
