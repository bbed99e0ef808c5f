"""Control maps on disk: whether the maps in a folder are current (the scene state hash and the
complete ``meta.json``), the result read back from them, and the atomic swap of a finished render
into place. Main thread (the hash reads bpy data).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConditioningResult
from .manifest import build_maps

FORMAT_VERSION = 1


def state_hash(scene: Any, camera: Any, frames: list[int], width: int, height: int) -> str:
    """Hash of what the maps depend on: settings, camera, object transforms, pose bones and mesh data per frame.

    Not covered (use force=True): animated modifier or shape-key changes that move no transform.
    """
    digest, objects = state_hash_begin(scene, camera, frames, width, height)
    for frame in frames:
        state_hash_frame(digest, scene, objects, frame)
    return digest.hexdigest()


def state_hash_begin(scene: Any, camera: Any, frames: list[int], width: int, height: int) -> tuple[Any, list[Any]]:
    """The frame-independent part of `state_hash`: settings, camera, mesh data."""
    digest = hashlib.sha256()
    digest.update(json.dumps([FORMAT_VERSION, camera.name, frames, width, height]).encode())
    cam = camera.data
    digest.update(repr([cam.type, cam.lens, cam.ortho_scale, cam.sensor_width, cam.sensor_height, cam.sensor_fit,
                        cam.shift_x, cam.shift_y, cam.clip_start, cam.clip_end]).encode())
    objects = sorted((o for o in scene.objects if not o.hide_render), key=lambda o: o.name)
    for obj in objects:
        digest.update(obj.name.encode())
        data = obj.data
        if obj.type == "MESH" and data is not None:
            coords = np.empty(len(data.vertices) * 3, dtype=np.float32)
            data.vertices.foreach_get("co", coords)
            digest.update(coords.tobytes())
    return digest, objects


def state_hash_frame(digest: Any, scene: Any, objects: list[Any], frame: int) -> None:
    """One frame's part of `state_hash`: object transforms and pose bones."""
    scene.frame_set(frame)
    for obj in objects:
        digest.update(np.array(obj.matrix_world, dtype=np.float32).tobytes())
        if obj.type == "ARMATURE":
            for bone in obj.pose.bones:
                digest.update(np.array(bone.matrix, dtype=np.float32).tobytes())


def read_meta(out_dir: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((out_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("complete") is True else None


def shot_result(out_dir: Path, meta: dict[str, Any], warnings: list[str], reused: bool) -> ConditioningResult:
    return ConditioningResult(
        out_dir=out_dir,
        meta=meta,
        frames=list(meta["frames"]),
        near=meta["near"],
        far=meta["far"],
        people=list(meta["people"]),
        warnings=warnings,
        reused=reused,
        maps=build_maps(out_dir, meta),
    )


def swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder into place; an old one moves aside first and is deleted after."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale(out_dir: Path) -> None:
    """Leftovers of renders that were killed mid-way: never complete, safe to delete."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
