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

# 2: only the objects that can show in the maps are hashed (other cameras and lights are not), so
# moving one shot's camera no longer re-renders every other shot's maps.
FORMAT_VERSION = 2

# Objects that can show in a control map (depth, masks, pose, flow, normals, lines, segments).
# Cameras other than the shot's, lights, light probes and speakers draw nothing in any of them.
_NOT_DRAWN = frozenset({"CAMERA", "LIGHT", "LIGHT_PROBE", "LIGHTPROBE", "SPEAKER"})
# The most state hashes remembered per session (a 100-shot film needs 100).
_MEMO_SIZE = 4096
_memo: dict[str, str] = {}


def state_hash(scene: Any, camera: Any, frames: list[int], width: int, height: int) -> str:
    """Hash of what the maps depend on: settings, camera, object transforms, pose bones and mesh data per frame.

    Not covered (use force=True): animated modifier or shape-key changes that move no transform.
    """
    digest, objects = state_hash_begin(scene, camera, frames, width, height)
    for frame in frames:
        state_hash_frame(digest, scene, objects, frame)
    return digest.hexdigest()


def drawn_objects(scene: Any, camera: Any) -> list[Any]:
    """The objects a shot's maps can show, by name: rendered, and not another camera or a light."""
    return sorted((o for o in scene.objects if not o.hide_render and (o.type not in _NOT_DRAWN or o == camera)),
                  key=lambda o: o.name)


def state_hash_begin(scene: Any, camera: Any, frames: list[int], width: int, height: int) -> tuple[Any, list[Any]]:
    """The frame-independent part of `state_hash`: settings, camera, mesh data."""
    digest = hashlib.sha256()
    digest.update(json.dumps([FORMAT_VERSION, camera.name, frames, width, height]).encode())
    digest.update(_camera_settings(camera))
    objects = drawn_objects(scene, camera)
    for obj in objects:
        digest.update(obj.name.encode())
        _hash_mesh(digest, obj)
    return digest, objects


def _camera_settings(camera: Any) -> bytes:
    cam = camera.data
    return repr([cam.type, cam.lens, cam.ortho_scale, cam.sensor_width, cam.sensor_height, cam.sensor_fit,
                 cam.shift_x, cam.shift_y, cam.clip_start, cam.clip_end]).encode()


def _hash_mesh(digest: Any, obj: Any) -> None:
    data = obj.data
    if obj.type == "MESH" and data is not None:
        coords = np.empty(len(data.vertices) * 3, dtype=np.float32)
        data.vertices.foreach_get("co", coords)
        digest.update(coords.tobytes())


def state_hash_frame(digest: Any, scene: Any, objects: list[Any], frame: int) -> None:
    """One frame's part of `state_hash`: object transforms and pose bones."""
    scene.frame_set(frame)
    for obj in objects:
        digest.update(np.array(obj.matrix_world, dtype=np.float32).tobytes())
        if obj.type == "ARMATURE":
            for bone in obj.pose.bones:
                digest.update(np.array(bone.matrix, dtype=np.float32).tobytes())


# --- the state hash remembered by what it is computed from ---------------------------------------
#
# `state_hash` steps through every frame of the shot (frame_set), about 1 ms a frame in a film of
# a hundred shots: seconds for a Generate All in which nothing changed. What it hashes (each
# frame's evaluated transforms and pose) is a function of inputs that can be read without
# stepping: each drawn object's own transform, parent, constraints and keyframes, its pose bones,
# and the same of every object it follows. A session memo maps a hash of those inputs to the
# state hash computed from them, so an unchanged shot costs one pass over its objects. Where the
# evaluated result can depend on anything else (drivers, NLA, physics, frame-change handlers,
# expressions run at evaluation), `inputs_key` gives no key and the full hash runs, as before.


def inputs_key(scene: Any, camera: Any, frames: list[int], width: int, height: int,
               objects: list[Any]) -> str | None:
    """A hash of everything the shot's state hash is computed from, or None when that cannot be told
    without evaluating the frames."""
    import bpy

    if bpy.app.handlers.frame_change_pre or bpy.app.handlers.frame_change_post:
        return None  # a script may move things on every frame change
    digest = hashlib.sha256()
    digest.update(json.dumps([FORMAT_VERSION, camera.name, frames, width, height, scene.render.fps,
                              scene.render.fps_base]).encode())
    digest.update(_camera_settings(camera))
    seen: set[str] = set()
    todo = list(objects)
    while todo:
        obj = todo.pop()
        if obj.name in seen:
            continue
        seen.add(obj.name)
        inputs = _object_inputs(obj)
        if inputs is None:
            return None
        text, follows = inputs
        digest.update(text.encode())
        _hash_mesh(digest, obj)
        todo.extend(follows)
    return digest.hexdigest()


def _object_inputs(obj: Any) -> tuple[str, list[Any]] | None:
    """What one object's evaluated transform and pose come from, and the objects it follows; None where
    evaluation can bring in more (drivers, NLA, rigid bodies)."""
    follows: list[Any] = [obj.parent] if obj.parent is not None else []
    parts: list[Any] = [obj.name, obj.type, obj.parent.name if obj.parent else "", obj.parent_type, obj.parent_bone,
                        _floats(obj.matrix_basis), _floats(obj.matrix_parent_inverse), obj.rotation_mode,
                        tuple(obj.delta_location), tuple(obj.delta_rotation_euler),
                        tuple(obj.delta_rotation_quaternion), tuple(obj.delta_scale)]
    if getattr(obj, "rigid_body", None) is not None:
        return None
    for constraint in obj.constraints:
        parts.append(_settings(constraint, follows))
    anim = _animation(obj.animation_data)
    if anim is None:
        return None
    parts.append(anim)
    if obj.type == "ARMATURE" and obj.pose is not None:
        if obj.data is not None:
            anim = _animation(obj.data.animation_data)
            if anim is None:
                return None
            parts.append(anim)
            parts.append([_floats(b.matrix_local) for b in obj.data.bones])
        for bone in obj.pose.bones:
            parts.append([bone.name, tuple(bone.location), tuple(bone.rotation_quaternion),
                          tuple(bone.rotation_euler), bone.rotation_mode, tuple(bone.scale)])
            parts.extend(_settings(c, follows) for c in bone.constraints)
    return repr(parts), follows


def _floats(matrix: Any) -> tuple[float, ...]:
    return tuple(v for row in matrix for v in row)


def _settings(struct: Any, follows: list[Any]) -> list[Any]:
    """Every property of a constraint (by RNA, so new constraint types are covered); the objects it
    points at are followed too."""
    out: list[Any] = [struct.bl_rna.identifier]
    for prop in struct.bl_rna.properties:
        key = prop.identifier
        if key == "rna_type":
            continue
        value = getattr(struct, key, None)
        if prop.type == "POINTER":
            if value is not None and getattr(value, "bl_rna", None) is not None and hasattr(value, "matrix_world"):
                follows.append(value)
            out.append((key, getattr(value, "name", None)))
        elif prop.type != "COLLECTION":
            out.append((key, tuple(value) if hasattr(value, "__len__") and not isinstance(value, str) else value))
    return out


def _animation(anim: Any) -> list[Any] | None:
    """The keyframes an object (or armature) is animated by; None with drivers or NLA tracks, whose
    values come from elsewhere."""
    if anim is None:
        return []
    if len(anim.drivers) or len(anim.nla_tracks):
        return None
    action = anim.action
    if action is None:
        return []
    out: list[Any] = [action.name, getattr(getattr(anim, "action_slot", None), "identifier", "")]
    for curve in _fcurves(anim, action):
        keys = curve.keyframe_points
        parts = []
        for attr in ("co", "handle_left", "handle_right"):
            part = np.empty(len(keys) * 2, dtype=np.float32)
            keys.foreach_get(attr, part)
            parts.append(part)
        points = np.concatenate(parts)
        out.append((curve.data_path, curve.array_index, curve.mute, curve.extrapolation, len(curve.modifiers),
                    [k.interpolation + k.easing for k in keys], hashlib.sha256(points.tobytes()).hexdigest()))
    return out


def _fcurves(anim: Any, action: Any) -> list[Any]:
    """The action's curves for this object: Blender 4.4+ layered actions keep them per slot."""
    curves = getattr(action, "fcurves", None)
    if curves is not None and len(curves):
        return list(curves)
    slot = getattr(anim, "action_slot", None)
    out: list[Any] = []
    for layer in getattr(action, "layers", ()):
        for strip in layer.strips:
            bag = strip.channelbag(slot) if slot is not None else None
            if bag is not None:
                out.extend(bag.fcurves)
    return out


def remembered_state(key: str | None) -> str | None:
    """The state hash computed before from the same inputs in this session."""
    return _memo.get(key) if key is not None else None


def remember_state(key: str | None, state: str) -> None:
    if key is None:
        return
    if len(_memo) >= _MEMO_SIZE:
        _memo.pop(next(iter(_memo)))
    _memo[key] = state


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
