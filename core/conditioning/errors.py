"""What render_shot returns and raises. Plain Python."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConditioningError(Exception):
    """Bad input for a shot's control maps; the message names the shot or object and the fix."""


class ConditioningCancelled(ConditioningError):
    """The caller's `cancel()` returned True; nothing was left on disk."""


@dataclass
class ConditioningResult:
    out_dir: Path  # the shot's conditioning/ folder
    meta: dict[str, Any]  # the contents of meta.json
    frames: list[int]
    near: float | None  # None when the camera saw no geometry
    far: float | None
    people: list[str]  # armature names mapped to OpenPose
    warnings: list[str] = field(default_factory=list)
    reused: bool = False  # True when the maps on disk were already current
    # Per frame, the control-map files the engine gets (manifest.build_maps): {"depth", "pose", "flow"}.
    maps: dict[int, dict[str, Path | None]] = field(default_factory=dict)
