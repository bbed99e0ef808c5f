"""ID masks: one id per character (an armature with the meshes it deforms) or per other object.

Ids go into the objects' `pass_index` for the render only (through the
RenderGuard, so the user's values come back), and Cycles' Object Index pass
gives the per-pixel id. The legend maps ids to names for regional prompts.

Runs on Blender's main thread.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

RENDERABLE = {"MESH", "CURVE", "SURFACE", "META", "FONT", "CURVES", "POINTCLOUD", "VOLUME"}
MAX_ID = 32767  # pass_index is a short


def owner_of(obj: Any) -> Any:
    """The armature that deforms or carries `obj`, else `obj` itself."""
    for mod in getattr(obj, "modifiers", ()):
        if mod.type == "ARMATURE" and mod.object is not None:
            return mod.object
    parent = obj.parent
    while parent is not None:
        if parent.type == "ARMATURE":
            return parent
        parent = parent.parent
    return obj


def assign_ids(scene: Any) -> tuple[dict[Any, int], dict[str, dict[str, Any]]]:
    """({object: id}, legend) for every renderable object; ids from 1 in name order (0 = background)."""
    groups: dict[str, list[Any]] = {}
    owners: dict[str, Any] = {}
    for obj in scene.objects:
        if obj.type not in RENDERABLE or obj.hide_render:
            continue
        owner = owner_of(obj)
        groups.setdefault(owner.name, []).append(obj)
        owners[owner.name] = owner
    ids: dict[Any, int] = {}
    legend: dict[str, dict[str, Any]] = {}
    for number, name in enumerate(sorted(groups), start=1):
        if number > MAX_ID:
            log.warning("more than %d mask ids: the rest share id 0", MAX_ID)
            break
        owner = owners[name]
        legend[str(number)] = {
            "name": name,
            "kind": "character" if owner.type == "ARMATURE" else "object",
            "objects": sorted(o.name for o in groups[name]),
        }
        for obj in groups[name]:
            ids[obj] = number
    return ids, legend
