"""The per-frame manifest of a conditioning folder: which control-map files each frame sends. Plain Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..timeline.paths import file_names, frame_name


def build_maps(conditioning_dir: Path, meta: dict[str, Any]) -> dict[int, dict[str, Path | None]]:
    """Per frame, the control-map files the engine gets: depth, pose where someone is visible, backward flow,
    and the normal / line-art / seg maps meta.json's "maps" lists (keys only for the kinds rendered).

    Flow is the ``flow/NNNN.npy`` render_shot writes (flow.py); None where it is missing.
    """
    pose_frames = {str(k): bool(v) for k, v in (meta.get("pose_frames") or {}).items()}
    extra = {kind: set(block.get("frames", meta["frames"])) for kind, block in (meta.get("maps") or {}).items()}
    maps: dict[int, dict[str, Path | None]] = {}
    folders = {kind: conditioning_dir / kind for kind in ("depth", "pose", "flow")}
    poses, flows = file_names(folders["pose"]), file_names(folders["flow"])
    for frame in meta["frames"]:
        png, npy = frame_name(frame), frame_name(frame, "npy")
        maps[frame] = {
            "depth": folders["depth"] / png,
            "pose": folders["pose"] / png if pose_frames.get(str(frame)) and png in poses else None,
            "flow": folders["flow"] / npy if npy in flows else None,
        }
        for kind, frames in extra.items():
            path = conditioning_dir / kind / frame_name(frame)
            maps[frame][kind] = path if frame in frames and path.is_file() else None
    return maps
