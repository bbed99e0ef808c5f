"""render_shot: a shot's control maps, rendered from its camera, written atomically.

Runs on Blender's main thread (renders with bpy). See __init__.py for the contract.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import depth, flow, masks, openpose_draw, pose, render
from .errors import ConditioningCancelled, ConditioningError, ConditioningResult
from .manifest import build_maps
from .png import write_png

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def _check_inputs(scene: Any, shot: Any, width: int, height: int) -> Any:
    camera = shot.camera
    if camera is None or camera.name not in scene.objects:
        raise ConditioningError(
            f"Shot '{shot.name}' has no camera (it was deleted or is not in this scene): "
            "bind a camera to its marker (Marker ▸ Bind Camera to Markers)"
        )
    if camera.type != "CAMERA":
        raise ConditioningError(
            f"Shot '{shot.name}' is bound to '{camera.name}', which is not a camera: "
            "select a camera and use Marker ▸ Bind Camera to Markers"
        )
    if shot.frame_end < shot.frame_start:
        raise ConditioningError(
            f"Shot '{shot.name}' has no frames ({shot.frame_start}–{shot.frame_end}): move its marker or the next one"
        )
    if width < 8 or height < 8:
        raise ConditioningError(f"Resolution {width}×{height} is too small: raise Long Edge to at least 64")
    return camera


def _state_hash(scene: Any, camera: Any, frames: list[int], width: int, height: int) -> str:
    """Hash of what the maps depend on: settings, camera, object transforms, pose bones and mesh data per frame.

    Not covered (use force=True): animated modifier or shape-key changes that move no transform.
    """
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
    for frame in frames:
        scene.frame_set(frame)
        for obj in objects:
            digest.update(np.array(obj.matrix_world, dtype=np.float32).tobytes())
            if obj.type == "ARMATURE":
                for bone in obj.pose.bones:
                    digest.update(np.array(bone.matrix, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _read_meta(out_dir: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((out_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("complete") is True else None


def _result(out_dir: Path, meta: dict[str, Any], warnings: list[str], reused: bool) -> ConditioningResult:
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


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder into place; an old one moves aside first and is deleted after."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _clean_stale(out_dir: Path) -> None:
    """Leftovers of renders that were killed mid-way: never complete, safe to delete."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)


def render_shot_impl(
    scene: Any, shot: Any, out_dir: Path, *, width: int, height: int,
    progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
    force: bool = False,
) -> ConditioningResult:
    # 1. Check inputs.
    camera = _check_inputs(scene, shot, width, height)
    out_dir = Path(out_dir)
    frames = list(range(shot.frame_start, shot.frame_end + 1))
    original_frame, original_subframe = scene.frame_current, scene.frame_subframe
    people, warnings = pose.find_people(scene)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    started = time.perf_counter()
    try:
        # 2. Reuse the maps on disk when nothing they depend on has changed.
        state = _state_hash(scene, camera, frames, width, height)
        existing = _read_meta(out_dir)
        if not force and existing is not None and existing.get("state") == state:
            log.info("conditioning for '%s' is current: %s", shot.name, out_dir)
            return _result(out_dir, existing, warnings, reused=True)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(out_dir)
        for sub in ("depth", "pose", "masks", "flow/forward"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        scratch = tmp / ".exr"
        scratch.mkdir()

        with render.RenderGuard() as guard:
            # 3. Minimal render settings and mask ids, restored on exit whatever happens.
            layer = render.configure(guard, scene, camera, width, height)
            ids, legend = masks.assign_ids(scene)
            for obj, number in ids.items():
                guard.set(obj, "pass_index", number)
            names = {entry["name"]: int(key) for key, entry in legend.items()}
            for person in people:
                person.mask_id = names.get(person.armature.name, -1)

            # 4. Per frame: passes → flow, masks, pose now; depth after, once near/far of the whole shot is known.
            # Z buffers wait on disk, not in memory: a two-minute shot must not need
            # gigabytes before its depth maps can be normalized.
            ranges: list[tuple[float, float] | None] = []
            pose_frames: dict[str, bool] = {}
            ids_per_frame: dict[str, list[int]] = {}
            for done, frame in enumerate(frames):
                if cancel is not None and cancel():
                    raise ConditioningCancelled(f"Rendering the control maps of '{shot.name}' was cancelled")
                passes = render.render_frame(scene, layer, frame, scratch)
                z, vec, index = passes["z"], passes["vector"], passes["index"]
                forward, backward = flow.flows_from_vector_pass(vec[..., 0], vec[..., 1], vec[..., 2], vec[..., 3])
                name = f"{frame:04d}"
                np.save(tmp / "flow" / "forward" / f"{name}.npy", forward)
                np.save(tmp / "flow" / f"{name}.npy", backward)
                ids = np.clip(index, 0, 65535).astype(np.uint16)
                write_png(tmp / "masks" / f"{name}.png", ids)
                # Which ids each frame shows: characters not in a shot are then known without reading its masks.
                ids_per_frame[str(frame)] = [int(v) for v in np.unique(ids) if v]
                if people:
                    found, drawn = pose.frame_people(scene, camera, people, width, height, z, index)
                    pose_frames[str(frame)] = bool(found)
                    if found:
                        doc = {"version": 1.3, "canvas_width": width, "canvas_height": height, "people": found}
                        (tmp / "pose" / f"{name}.json").write_text(json.dumps(doc))
                        write_png(tmp / "pose" / f"{name}.png", openpose_draw.draw_people(height, width, drawn))
                else:
                    pose_frames[str(frame)] = False
                np.save(scratch / f"z{name}.npy", z)
                ranges.append(depth.z_range(z))
                if progress is not None:
                    progress(done + 1, len(frames))

        # 5. Depth maps with the whole shot's near/far.
        span = depth.merge_ranges(ranges)
        near, far = span if span is not None else (None, None)
        if span is None:
            warnings.append(f"Shot '{shot.name}': the camera sees no geometry, so the depth maps are empty")
        for frame in frames:
            z = np.load(scratch / f"z{frame:04d}.npy")
            encoded = depth.encode(z, near, far) if span is not None else np.zeros(z.shape, np.uint16)
            write_png(tmp / "depth" / f"{frame:04d}.png", encoded)
        shutil.rmtree(scratch, ignore_errors=True)
        if not people:
            shutil.rmtree(tmp / "pose")

        # 6. meta.json, `complete` last; then the folder moves into place in one rename.
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "shot": shot.name,
            "camera": camera.name,
            "ortho": camera.data.type == "ORTHO",
            "width": width,
            "height": height,
            "frames": frames,
            "fps": scene.render.fps / scene.render.fps_base,
            "near": near,
            "far": far,
            "units": "scene units along the camera's view axis (Blender's Z pass)",
            "formula": depth.FORMULA,
            "depth": {"path": "depth/NNNN.png", "format": "png 16-bit grayscale"},
            "people": [p.armature.name for p in people],
            "pose": bool(people) and any(pose_frames.values()),
            "pose_frames": pose_frames,
            "pose_format": "pose/NNNN.json OpenPose (COCO-18 body, 21-point hands, pixels) + pose/NNNN.png drawing; "
            "frames with nobody visible have neither",
            "masks": {"path": "masks/NNNN.png", "format": "png 16-bit grayscale, value = id, 0 = background",
                      "legend": legend, "ids_per_frame": ids_per_frame},
            "flow": flow.CONVENTION,
            "state": state,
            "render_seconds": round(time.perf_counter() - started, 3),
            "warnings": warnings,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        meta["complete"] = True
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        _swap_into_place(tmp, out_dir)
        log.info("conditioning for '%s': %d frames in %.1fs → %s", shot.name, len(frames), meta["render_seconds"], out_dir)
        return _result(out_dir, meta, warnings, reused=False)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        scene.frame_set(original_frame, subframe=original_subframe)
