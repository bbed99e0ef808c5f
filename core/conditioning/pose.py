"""People in the scene as OpenPose keypoints, projected through the shot camera.

Every armature counts as a person unless its `viewfinder_pose.is_person` is
off; its bones are mapped by `rigs.auto_map`, with the user's per-keypoint
overrides (`viewfinder_pose.bones`, see props/pose.py) taking precedence.

A keypoint is invisible when it is behind the camera, outside the frame, or
behind other geometry: the Z pass at its pixel is nearer than the keypoint and
the pixel does not belong to the person itself (joints lie inside the body
mesh, so the person's own surface never hides its joints).

Runs on Blender's main thread (reads pose bones).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import rigs

log = logging.getLogger(__name__)

# A keypoint is hidden when other geometry is nearer than it by more than this fraction of its depth.
OCCLUSION_TOLERANCE = 0.02


@dataclass
class Person:
    armature: Any  # bpy.types.Object
    rig: rigs.RigMap
    mask_id: int = 0


def _overrides(obj: Any) -> dict[str, rigs.BoneEnd]:
    settings = getattr(obj, "viewfinder_pose", None)
    if settings is None:
        return {}
    return {item.name: (item.bone, "tail" if item.use_tail else "head") for item in settings.bones if item.bone}


def find_people(scene: Any) -> tuple[list[Person], list[str]]:
    """Armatures that stand for people, and a warning per armature that could not be mapped."""
    people: list[Person] = []
    warnings: list[str] = []
    for obj in sorted(scene.objects, key=lambda o: o.name):
        if obj.type != "ARMATURE" or obj.hide_render:
            continue
        settings = getattr(obj, "viewfinder_pose", None)
        if settings is not None and not settings.is_person:
            continue
        rig = rigs.auto_map(obj.data.bones.keys(), _overrides(obj))
        if not rig.is_person:
            missing = [k for k in rigs.CORE_KEYPOINTS if k in rig.unmapped]
            bones = [b.name for b in obj.data.bones]
            shown = ", ".join(bones[:12]) + (f" … ({len(bones)} bones)" if len(bones) > 12 else "")
            warnings.append(
                f"Armature '{obj.name}' has no recognizable human bones (could not map {', '.join(missing)} "
                f"from its bones: {shown or 'none'}): map them in its Viewfinder Pose settings, "
                "or untick 'Is a Person' there; it gets no pose map"
            )
            continue
        people.append(Person(obj, rig))
    return people, warnings


def _world_point(obj: Any, end: rigs.BoneEnd) -> Any:
    bone = obj.pose.bones[end[0]]
    return obj.matrix_world @ (bone.tail if end[1] == "tail" else bone.head)


# A keypoint projected into the image: (x, y, depth along the view axis), None where it has no bone.
Projected = tuple[float, float, float] | None


@dataclass
class ProjectedPerson:
    """One person's keypoints projected on the current frame, before the occlusion test: plain data
    (no Blender object), so a worker thread can finish the frame while Blender renders the next."""

    name: str  # the armature's
    mask_id: int
    body: list[Projected]
    hands: list[list[Projected] | None]


def project_points(scene: Any, camera: Any, person: Person, ends: list[rigs.BoneEnd | None], width: int,
                   height: int) -> list[Projected]:
    """Pixel coordinates (x right, y down) and depth of each bone end on the current frame. Main thread (bpy)."""
    from bpy_extras.object_utils import world_to_camera_view

    out: list[Projected] = []
    for end in ends:
        if end is None:
            out.append(None)
            continue
        ndc = world_to_camera_view(scene, camera, _world_point(person.armature, end))
        out.append((ndc.x * width, (1.0 - ndc.y) * height, ndc.z))
    return out


def project_people(scene: Any, camera: Any, people: list[Person], width: int, height: int) -> list[ProjectedPerson]:
    """Every person's keypoints on the current frame. Main thread (reads pose bones)."""
    return [ProjectedPerson(person.armature.name, person.mask_id,
                            project_points(scene, camera, person, person.rig.body, width, height),
                            [project_points(scene, camera, person, ends, width, height) if ends is not None else None
                             for ends in (person.rig.left_hand, person.rig.right_hand)])
            for person in people]


def visible_points(points: list[Projected], mask_id: int, width: int, height: int, z: np.ndarray,
                   index: np.ndarray) -> list[tuple[float, float] | None]:
    """(x, y) of each keypoint that is in front of the camera, in the frame and not hidden; None otherwise."""
    out: list[tuple[float, float] | None] = []
    for point in points:
        if point is None:
            out.append(None)
            continue
        px, py, depth = point
        if depth <= 0.0 or not (0.0 <= px < width and 0.0 <= py < height):
            out.append(None)
            continue
        row, col = int(py), int(px)
        hidden = index[row, col] != mask_id and z[row, col] < depth * (1.0 - OCCLUSION_TOLERANCE)
        out.append(None if hidden else (px, py))
    return out


def _flat(points: list[tuple[float, float] | None]) -> list[float]:
    flat: list[float] = []
    for p in points:
        flat.extend((p[0], p[1], 1.0) if p is not None else (0.0, 0.0, 0.0))
    return flat


def people_in_frame(
    projected: list[ProjectedPerson], width: int, height: int, z: np.ndarray, index: np.ndarray
) -> tuple[list[dict[str, Any]], list[tuple[list, list | None, list | None]]]:
    """(OpenPose JSON people, normalized points for drawing) from projected keypoints and the frame's Z and
    mask ids; only people with a visible keypoint. Plain numpy: runs on any thread."""
    json_people: list[dict[str, Any]] = []
    drawn: list[tuple[list, list | None, list | None]] = []

    def norm(points: list | None) -> list | None:
        if points is None:
            return None
        return [(p[0] / width, p[1] / height) if p is not None else None for p in points]

    for item in projected:
        mask_id = item.mask_id
        body = visible_points(item.body, mask_id, width, height, z, index)
        hands = [visible_points(h, mask_id, width, height, z, index) if h is not None else None for h in item.hands]
        if all(p is None for p in body):
            continue
        json_people.append(
            {
                "person_id": [-1],
                "armature": item.name,
                "pose_keypoints_2d": _flat(body),
                "face_keypoints_2d": [],
                "hand_left_keypoints_2d": _flat(hands[0]) if hands[0] is not None else [],
                "hand_right_keypoints_2d": _flat(hands[1]) if hands[1] is not None else [],
            }
        )
        drawn.append((norm(body), norm(hands[0]), norm(hands[1])))  # type: ignore[arg-type]
    return json_people, drawn


def frame_people(
    scene: Any, camera: Any, people: list[Person], width: int, height: int, z: np.ndarray, index: np.ndarray
) -> tuple[list[dict[str, Any]], list[tuple[list, list | None, list | None]]]:
    """`project_people` then `people_in_frame`, on the current frame. Main thread."""
    return people_in_frame(project_people(scene, camera, people, width, height), width, height, z, index)
