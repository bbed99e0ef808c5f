"""Sample a shot's animated settings per frame, with Blender's own evaluation.

Prompt key weights, depth/pose weights, control start/end, FLOW strength, the shot's
guidance scale and the seed may carry F-curves or drivers; so may the normal, line-art and seg
weights and each map's own start/end (sampled only for the maps the shot sends, `maps`, and the
ranges switched on, so a depth + pose shot samples what it always did) (on the Scene, paths like
`viewfinder.shot_list[2].depth_weight`). When any of them does, the scene is stepped
through the shot's frames (`frame_set`, which evaluates F-curves, NLA and drivers and
writes the values back to the settings) and each value read. The seed holds between
its keys whatever the curve's interpolation (a seed halfway between 5 and 9 is just
another seed, not a blend), and a value outside what the engine takes is clamped with
a warning. The result is plain data: job-level values (the shot's first frame) and,
per frame, only the fields whose value differs from them.

Main thread only (reads bpy data and changes the current frame, then restores it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import anim_paths

if TYPE_CHECKING:
    import bpy

log = logging.getLogger(__name__)

SEED_MAX = 2**31 - 1  # the seed property is a 32-bit int in Blender

# Shot property -> (engine field, lowest, highest the engine takes).
FIELDS: dict[str, tuple[str, float, float]] = {
    "depth_weight": ("depth_weight", 0.0, 2.0),
    "pose_weight": ("pose_weight", 0.0, 2.0),
    "control_start": ("control_start", 0.0, 1.0),
    "control_end": ("control_end", 0.0, 1.0),
    "guidance_scale": ("guidance_scale", 0.0, 50.0),
    "flow_strength": ("strength", 0.05, 1.0),
}
# The maps beyond depth and pose: their weights, sampled only when the shot sends the map.
MAP_WEIGHTS: dict[str, tuple[str, float, float]] = {
    f"{kind}_weight": (f"{kind}_weight", 0.0, 2.0) for kind in ("normal", "lineart", "seg")}
# Each map's own [start, end] (the request's control_ranges), sampled where the map's own range is on.
RANGE_KINDS = ("depth", "pose", "normal", "lineart", "seg")
RANGES: dict[str, tuple[str, float, float]] = {
    f"{kind}_{end}": ("control_ranges", 0.0, 1.0) for kind in RANGE_KINDS for end in ("start", "end")}
LIMITS = {**FIELDS, **MAP_WEIGHTS, **RANGES}
LABELS = {"depth_weight": "Depth Weight", "pose_weight": "Pose Weight", "control_start": "Control Start",
          "control_end": "Control End", "guidance_scale": "Guidance", "flow_strength": "Flow Strength",
          "seed": "Seed", "normal_weight": "Normal Weight", "lineart_weight": "Line Art Weight",
          "seg_weight": "Segmentation Weight",
          **{f"{k}_{e}": f"{k.replace('lineart', 'line art').title()} {e.title()}" for k in RANGE_KINDS
             for e in ("start", "end")}}


class SampleError(ValueError):
    """Sampled values the engine cannot use; the message names the frames and the fix."""


@dataclass
class ShotSamples:
    """A shot's settings over its frames, as the engine takes them."""

    job_values: dict[str, Any]  # engine field -> value on the shot's first frame
    per_frame: dict[int, dict[str, Any]]  # frame -> engine fields that differ from job_values
    prompt_keys: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    animated: list[str] = field(default_factory=list)  # shot properties with curves, for the UI and logs


def shot_prefix(scene: bpy.types.Scene, shot: Any) -> str:
    """`viewfinder.shot_list[i]`: the shot's data-path prefix on the Scene."""
    for index, item in enumerate(scene.viewfinder.shot_list):
        if item.as_pointer() == shot.as_pointer():
            return anim_paths.item_path("shot_list", index)
    raise ValueError(f"shot '{shot.name}' is not in scene.viewfinder.shot_list")


def frame_runs(frames: Sequence[int]) -> str:
    """'3-5, 9' for [3, 4, 5, 9]."""
    runs: list[str] = []
    ordered = sorted(frames)
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            first, last = ordered[start], ordered[i - 1]
            runs.append(str(first) if first == last else f"{first}-{last}")
            start = i
    return ", ".join(runs)


def own_ranges(shot: Any, maps: Sequence[str] = ()) -> list[str]:
    """The map kinds (depth, pose and the sent ``maps``) whose own start/end is on."""
    return [k for k in RANGE_KINDS if (k in ("depth", "pose") or k in maps) and getattr(shot, f"use_{k}_range", False)]


def sample_shot(scene: bpy.types.Scene, shot: Any, frames: Sequence[int], maps: Sequence[str] = ()) -> ShotSamples:
    """Every animatable shot setting at every frame of ``frames``; see the module docstring.

    ``maps``: the kinds beyond depth and pose the shot sends ("normal", "lineart", "seg").
    """
    # 1. Which properties carry curves (F-curves or drivers) on this shot.
    prefix = shot_prefix(scene, shot)
    curves = anim_paths.curves_under(scene, prefix)
    names = sampled_names(shot, maps)
    keys = [(i, k) for i, k in enumerate(shot.prompt_keys)]
    warnings: list[str] = []
    empty = [i for i, k in keys if not k.prompt.strip()]
    if empty:
        warnings.append(f"Shot '{shot.name}': prompt keys {', '.join(str(i + 1) for i in empty)} have no prompt "
                        "and are left out: type a prompt or remove them")
    keys = [(i, k) for i, k in keys if k.prompt.strip()]
    animated = [n for n in names if n in curves] + [f"prompt_keys[{i}].weight" for i, _ in keys
                                                    if f"prompt_keys[{i}].weight" in curves]

    # 2. Step through the frames: Blender evaluates curves, NLA and drivers.
    rows: dict[int, dict[str, Any]] = {}
    weights: dict[int, list[float]] = {}
    original = (scene.frame_current, scene.frame_subframe)
    try:
        for frame in frames:
            if animated:
                scene.frame_set(frame)
            rows[frame] = {n: getattr(shot, n) for n in names}
            weights[frame] = [round(float(k.weight), 4) for _, k in keys]
    finally:
        if animated:
            scene.frame_set(original[0], subframe=original[1])

    # 3. The seed holds between its keys; everything is brought into the engine's ranges.
    seed_curve = curves.get("seed")
    if seed_curve is not None and not seed_curve[1]:
        for frame in frames:
            rows[frame]["seed"] = _held_key(seed_curve[0], frame)
    warnings += _clamp(shot.name, rows)
    _check_control_range(shot.name, rows)
    _pair_ranges(shot.name, rows)

    # 4. Job values (the first frame) and, per frame, only what differs from them.
    job_values, per_frame = _job_and_frames(rows, frames, weights if keys else None)
    if keys:
        zero = [f for f in frames if not any(weights[f])]
        if zero:
            warnings.append(f"Shot '{shot.name}': every prompt key's weight is 0 on frames {frame_runs(zero)}, so "
                            "they use the shot prompt; key a weight above 0 there to keep the prompt travel going")
    return ShotSamples(job_values, per_frame, [k.prompt for _, k in keys], warnings, animated)


def sampled_names(shot: Any, maps: Sequence[str]) -> list[str]:
    """The shot properties sampled per frame: the base fields, the sent maps' weights, the own ranges on."""
    names = list(FIELDS) + ["seed"] + [f"{k}_weight" for k in maps]
    names += [f"{k}_{end}" for k in own_ranges(shot, maps) for end in ("start", "end")]
    if not shot.use_guidance_scale:
        names.remove("guidance_scale")
    if shot.coherence != "FLOW":
        names.remove("flow_strength")
    return names


def _job_and_frames(rows: dict[int, dict[str, Any]], frames: Sequence[int], weights: dict[int, list[float]] | None,
                    ) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Engine fields of the first frame, and per frame those that differ from it (prompt weights always)."""
    first = rows[frames[0]]
    job_values = {_field(n): v for n, v in first.items()}
    per_frame: dict[int, dict[str, Any]] = {}
    for frame in frames:
        own = {_field(n): v for n, v in rows[frame].items() if v != first[n] and n != "control_ranges"}
        ranges = {k: r for k, r in rows[frame].get("control_ranges", {}).items() if r != first["control_ranges"][k]}
        if ranges:
            own["control_ranges"] = ranges
        if weights is not None:
            own["prompt_weights"] = weights[frame]
        if own:
            per_frame[frame] = own
    return job_values, per_frame


def _field(name: str) -> str:
    return LIMITS[name][0] if name in LIMITS and name not in RANGES else name


def _pair_ranges(shot_name: str, rows: dict[int, dict[str, Any]]) -> None:
    """Fold each map's sampled `<kind>_start`/`<kind>_end` into the row's control_ranges {kind: [start, end]}."""
    bad: dict[str, list[int]] = {}
    for frame, row in rows.items():
        ranges: dict[str, list[float]] = {}
        for kind in RANGE_KINDS:
            if f"{kind}_start" in row:
                ranges[kind] = [row.pop(f"{kind}_start"), row.pop(f"{kind}_end")]
                if ranges[kind][0] >= ranges[kind][1]:
                    bad.setdefault(kind, []).append(frame)
        if ranges:
            row["control_ranges"] = ranges
    for kind, frames in bad.items():
        label = LABELS[f"{kind}_start"].rsplit(" ", 1)[0]
        raise SampleError(f"Shot '{shot_name}': {label} Start is not below {label} End on frames "
                          f"{frame_runs(frames)}: fix them (or their keys in the Graph Editor)")


def _held_key(fcurve: Any, frame: int) -> float:
    """The value of the last key at or before ``frame`` (the first key before the first)."""
    points = sorted((p.co[0], p.co[1]) for p in fcurve.keyframe_points)
    if not points:
        return fcurve.evaluate(frame)
    value = points[0][1]
    for x, y in points:
        if x <= frame + 1e-6:
            value = y
    return value


def _clamp(shot_name: str, rows: dict[int, dict[str, Any]]) -> list[str]:
    """Round and clamp the sampled values in place; one warning per property that needed it."""
    outside: dict[str, list[tuple[int, Any, Any]]] = {}
    for frame, row in rows.items():
        for name, value in row.items():
            if name == "seed":
                raw = int(round(value))
                clamped: Any = min(max(raw, 0), SEED_MAX)
            else:
                low, high = LIMITS[name][1], LIMITS[name][2]
                raw = round(float(value), 4)
                clamped = min(max(raw, low), high)
            if clamped != raw:
                outside.setdefault(name, []).append((frame, raw, clamped))
            row[name] = clamped
    warnings = []
    for name, hits in outside.items():
        frames = [h[0] for h in hits]
        low, high = (0, SEED_MAX) if name == "seed" else LIMITS[name][1:]
        warnings.append(f"Shot '{shot_name}': {LABELS[name]} is {hits[0][1]} on frame {hits[0][0]}"
                        f"{' (and frames ' + frame_runs(frames[1:]) + ')' if len(hits) > 1 else ''}, outside "
                        f"{low}–{high}: clamped to {hits[0][2]}; fix the keys in the Graph Editor")
    return warnings


def _check_control_range(shot_name: str, rows: dict[int, dict[str, Any]]) -> None:
    bad = [f for f, row in rows.items() if row["control_start"] >= row["control_end"]]
    if bad:
        raise SampleError(f"Shot '{shot_name}': Control Start is not below Control End on frames {frame_runs(bad)}: "
                          "fix their keys in the Graph Editor")
