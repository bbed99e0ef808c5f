"""The per-frame manifest of a conditioning folder: which control-map files each frame sends. Plain Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..timeline.paths import frame_name


def build_maps(conditioning_dir: Path, meta: dict[str, Any]) -> dict[int, dict[str, Path | None]]:
    """Per frame, the control-map files the engine gets: depth, pose where someone is visible, backward flow,
    and the normal / line-art / seg maps meta.json's "maps" lists (keys only for the kinds rendered).

    Flow is the ``flow/NNNN.npy`` render_shot writes (flow.py); None where it is missing.
    """
    pose_frames = {str(k): bool(v) for k, v in (meta.get("pose_frames") or {}).items()}
    extra = {kind: set(block.get("frames", meta["frames"])) for kind, block in (meta.get("maps") or {}).items()}
    maps: dict[int, dict[str, Path | None]] = {}
    for frame in meta["frames"]:
        depth = conditioning_dir / "depth" / frame_name(frame)
        pose = conditioning_dir / "pose" / frame_name(frame)
        flow = conditioning_dir / "flow" / frame_name(frame, "npy")
        maps[frame] = {
            "depth": depth,
            "pose": pose if pose_frames.get(str(frame)) and pose.is_file() else None,
            "flow": flow if flow.is_file() else None,
        }
        for kind, frames in extra.items():
            path = conditioning_dir / kind / frame_name(frame)
            maps[frame][kind] = path if frame in frames and path.is_file() else None
    return maps
