"""Shots from camera-bound timeline markers.

A shot is a timeline marker bound to a camera (Blender's own "Bind Camera to
Markers"), running up to the frame before the next camera-bound marker or to
the scene's end. With no bound markers the scene camera covers the scene range.

`plan_shots` is plain Python over plain tuples so that it can be unit tested
without Blender; `sync_shots` applies a plan to `scene.viewfinder.shot_list`,
keeping each shot's settings across renames, moves, saves and reloads.

Runs on Blender's main thread (sync_shots writes RNA data).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import anim_paths

if TYPE_CHECKING:
    import bpy

log = logging.getLogger(__name__)

ARCHIVE_LIMIT = 64


@dataclass(frozen=True)
class MarkerInfo:
    """What the shot planner needs to know of one timeline marker."""

    name: str
    frame: int
    camera: str | None  # the bound object's name, None when unbound
    camera_is_camera: bool = True


@dataclass
class ShotPlan:
    """One planned shot; `problem` is a user-facing message, empty when fine."""

    name: str
    camera: str | None
    frame_start: int
    frame_end: int
    marker_frame: int | None  # None for the implicit scene-camera shot
    problem: str = ""

    @property
    def frame_count(self) -> int:
        return max(0, self.frame_end - self.frame_start + 1)


@dataclass
class Plan:
    shots: list[ShotPlan] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # scene-level problems


def plan_shots(
    markers: Iterable[MarkerInfo],
    scene_start: int,
    scene_end: int,
    scene_camera: str | None,
    scene_camera_is_camera: bool = True,
) -> Plan:
    """Turn markers into shots. Pure: no Blender needed.

    Markers that are not bound to anything do not start shots. A marker bound
    to a non-camera object still starts a shot (Blender would switch the view
    to that object there), but the shot carries a problem naming the object.
    """
    plan = Plan()
    bound = sorted((m for m in markers if m.camera is not None), key=lambda m: (m.frame, m.name))

    if not bound:
        return _scene_camera_plan(plan, scene_start, scene_end, scene_camera, scene_camera_is_camera)

    for index, marker in enumerate(bound):
        following = bound[index + 1] if index + 1 < len(bound) else None
        plan.shots.append(_marker_shot(marker, following, scene_end))

    if bound[0].frame > scene_start:
        log.debug("frames %d–%d come before the first shot", scene_start, bound[0].frame - 1)

    names = [s.name for s in plan.shots]
    for name in sorted({n for n in names if names.count(n) > 1}):
        for shot in plan.shots:
            if shot.name == name and not shot.problem:
                shot.problem = f"Two shots are named '{name}': rename one of the markers (F2 in the timeline)"
    return plan


def _scene_camera_plan(plan: Plan, scene_start: int, scene_end: int, scene_camera: str | None,
                       scene_camera_is_camera: bool) -> Plan:
    """No bound markers: the scene camera over the scene's range (or the problem why not)."""
    if scene_camera is None:
        plan.problems.append(
            "The scene has no camera: add one (Add ▸ Camera) and make it the scene camera, "
            "or bind cameras to timeline markers (Marker ▸ Bind Camera to Markers)"
        )
        return plan
    shot = ShotPlan(scene_camera, scene_camera, scene_start, scene_end, None)
    if not scene_camera_is_camera:
        shot.problem = (
            f"The scene camera '{scene_camera}' is not a camera object: "
            "set a camera in Scene Properties ▸ Camera"
        )
    elif scene_end < scene_start:
        shot.problem = f"The scene's frame range {scene_start}–{scene_end} is empty: fix Frame Start/End"
    plan.shots.append(shot)
    return plan


def _marker_shot(marker: MarkerInfo, following: MarkerInfo | None, scene_end: int) -> ShotPlan:
    """The shot a bound marker starts, up to the next one, with the problem that stops it, if any."""
    end = following.frame - 1 if following is not None else scene_end
    shot = ShotPlan(marker.name, marker.camera, marker.frame, min(end, scene_end), marker.frame)
    if not marker.camera_is_camera:
        shot.problem = (
            f"Marker '{marker.name}' is bound to '{marker.camera}', which is not a camera: "
            "select a camera and use Marker ▸ Bind Camera to Markers"
        )
    elif following is not None and following.frame == marker.frame:
        shot.problem = (
            f"Markers '{marker.name}' and '{following.name}' are both on frame {marker.frame}, "
            f"so shot '{marker.name}' has no frames: move one of them"
        )
    elif marker.frame > scene_end:
        shot.problem = (
            f"Marker '{marker.name}' on frame {marker.frame} is after the scene's end "
            f"({scene_end}): move it or extend the scene's frame range"
        )
    elif shot.frame_count == 0:
        shot.problem = f"Shot '{marker.name}' has no frames: move its marker or the next one"
    return shot


def default_seed(shot_name: str) -> int:
    """A distinct, reproducible starting seed per shot."""
    return zlib.crc32(shot_name.encode("utf-8")) & 0x7FFFFFFF


# --- Blender side ----------------------------------------------------------


def markers_of(scene: bpy.types.Scene) -> list[MarkerInfo]:
    return [
        MarkerInfo(
            m.name,
            m.frame,
            m.camera.name if m.camera is not None else None,
            m.camera is None or m.camera.type == "CAMERA",
        )
        for m in scene.timeline_markers
    ]


def plan_for_scene(scene: bpy.types.Scene) -> Plan:
    cam = scene.camera
    return plan_shots(
        markers_of(scene),
        scene.frame_start,
        scene.frame_end,
        cam.name if cam is not None else None,
        cam is None or cam.type == "CAMERA",
    )


def _signature(plan: Plan) -> list[tuple[Any, ...]]:
    return [(s.name, s.camera, s.frame_start, s.frame_end, s.marker_frame, s.problem) for s in plan.shots]


def _stored_signature(items: Sequence[Any]) -> list[tuple[Any, ...]]:
    return [
        (
            i.name,
            i.camera.name if i.camera is not None else None,
            i.frame_start,
            i.frame_end,
            i.marker_frame if i.has_marker else None,
            i.problem,
        )
        for i in items
    ]


def _match(plan: Plan, stored: Sequence[Any]) -> list[int | None]:
    """For each planned shot, the index of the stored item that holds its settings.

    Matching goes from strict to loose so a renamed marker (same frame and
    camera) and a moved marker (same name) both keep their settings.
    """
    taken: set[int] = set()
    result: list[int | None] = [None] * len(plan.shots)

    def cam(item: Any) -> str | None:
        return item.camera.name if item.camera is not None else None

    rules = (
        lambda s, i: i.name == s.name and i.marker_frame == s.marker_frame,
        lambda s, i: i.name == s.name,
        lambda s, i: s.marker_frame is not None and i.marker_frame == s.marker_frame and cam(i) == s.camera,
        lambda s, i: s.camera is not None and cam(i) == s.camera,
    )
    for rule in rules:
        for si, shot in enumerate(plan.shots):
            if result[si] is not None:
                continue
            candidates = [k for k, item in enumerate(stored) if k not in taken and rule(shot, item)]
            if len(candidates) == 1 or (candidates and rule is rules[0]):
                result[si] = candidates[0]
                taken.add(candidates[0])
    return result


def write_refused(exc: AttributeError) -> bool:
    """True when Blender refused to write ID data in a read-only context (drawing the UI), not for a bug.

    Blender says "Writing to ID classes in this context is not allowed: ..."; any other
    AttributeError raised inside the sync is a real error and must surface.
    """
    return "in this context is not allowed" in str(exc)


def sync_shots(scene: bpy.types.Scene) -> bool:
    """Bring `scene.viewfinder.shot_list` in line with the markers.

    Returns True when something was written. Writes nothing when the list is
    already current, so calling it often (handlers, timers, every operator)
    costs a marker scan and never an undo step or depsgraph update.
    """
    settings = scene.viewfinder
    stored = settings.shot_list
    plan = plan_for_scene(scene)
    if _signature(plan) == _stored_signature(stored):
        return False

    # 1. Find which stored item (or archived item) carries each shot's settings.
    matches = _match(plan, stored)
    archive = settings.shot_archive
    keep = {m for m in matches if m is not None}
    # Where each item's animation goes (core.scene.anim_paths: keys follow their shot).
    sources: list[tuple[str, int]] = [("shot_archive", a) for a in range(len(archive))]
    moves: dict[tuple[str, int], tuple[str, int] | None] = {}

    # 2. Shots that disappeared keep their settings in the archive, in case the
    #    marker comes back (undo is not the only way users recover).
    for k in sorted(set(range(len(stored))) - keep):
        item = archive.add()
        _apply(item, _settings_dict(stored[k]))
        item.name = stored[k].name
        sources.append(("shot_list", k))
        while len(archive) > ARCHIVE_LIMIT:
            archive.remove(0)
            moves[sources.pop(0)] = None

    # 3. Build the new list in timeline order: reuse matched items' settings.
    values: list[dict[str, Any]] = []
    for position, source in enumerate(sources):
        moves[source] = ("shot_archive", position)
    for index, (shot, match) in enumerate(zip(plan.shots, matches)):
        if match is not None:
            values.append(_settings_dict(stored[match]))
            moves[("shot_list", match)] = ("shot_list", index)
            continue
        restored = next((a for a in reversed(range(len(archive))) if archive[a].name == shot.name), None)
        if restored is not None:
            moves[sources[restored]] = ("shot_list", index)
        values.append(_settings_dict(archive[restored]) if restored is not None else {"seed": default_seed(shot.name)})

    stored.clear()
    for shot, saved in zip(plan.shots, values):
        item = stored.add()
        _apply(item, saved)
        item.name = shot.name
        item.camera = _find_object(shot.camera)
        item.frame_start = shot.frame_start
        item.frame_end = shot.frame_end
        item.has_marker = shot.marker_frame is not None
        item.marker_frame = shot.marker_frame if shot.marker_frame is not None else 0
        item.problem = shot.problem
    if settings.active_shot_index >= len(stored):
        settings.active_shot_index = max(0, len(stored) - 1)
    anim_paths.remap(scene, moves)
    return True


_SYNCED = {"name", "camera", "frame_start", "frame_end", "has_marker", "marker_frame", "problem"}


def _settings_dict(item: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, prop in item.bl_rna.properties.items():
        if key == "rna_type" or key in _SYNCED:
            continue
        if prop.type == "COLLECTION":  # e.g. prompt_keys (RNA calls collections read-only: they are not set whole)
            out[key] = [_item_dict(entry) for entry in getattr(item, key)]
            continue
        if prop.is_readonly:
            continue
        if prop.type == "POINTER":
            continue
        value = getattr(item, key)
        if hasattr(value, "__len__") and not isinstance(value, str):
            value = tuple(value)
        out[key] = value
    return out


def _item_dict(entry: Any) -> dict[str, Any]:
    """A collection entry's settings, its name included (prompt keys, nested in a shot)."""
    out = _settings_dict(entry)
    out["name"] = entry.name
    return out


def _apply(item: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, list):
            collection = getattr(item, key)
            collection.clear()
            for entry_values in value:
                _apply(collection.add(), entry_values)
            continue
        setattr(item, key, value)


def _find_object(name: str | None) -> Any:
    if name is None:
        return None
    import bpy  # deferred: keeps this module importable without Blender

    return bpy.data.objects.get(name)


def scene_problems(scene: bpy.types.Scene) -> list[str]:
    """Scene-level problems (no camera at all) plus each shot's own problem."""
    plan = plan_for_scene(scene)
    return plan.problems + [s.problem for s in plan.shots if s.problem]
