"""F-curves and drivers on shot settings, and keeping them on their shot when the list changes.

Shot settings live in `scene.viewfinder.shot_list`, a collection, and Blender names an
animated property of a collection item by its index:
`viewfinder.shot_list[2].depth_weight` on the Scene's animation data. The shot list is
rebuilt in timeline order whenever markers change (core.scene.shots.sync_shots), so a shot
added before another one moves it to a new index. The choice: **keys follow their
shot**. sync_shots computes where every item goes (a new index, the archive when its
marker disappears, back from the archive when it returns) and `remap` rewrites the
data paths of the F-curves and drivers to match. Keys of an archived shot that falls
out of the archive are deleted with it. Paths keyed by name (`shot_list["Wide"]`) are
left alone: they follow the name.

Main thread only (writes bpy data).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import bpy

log = logging.getLogger(__name__)

PATH_RE = re.compile(r"^viewfinder\.(shot_list|shot_archive)\[(\d+)\](.*)$")


def item_path(collection: str, index: int) -> str:
    """The data-path prefix of a shot item on the Scene: `viewfinder.shot_list[2]`."""
    return f"viewfinder.{collection}[{index}]"


def action_fcurves(anim_data: Any) -> Any:
    """The F-curves of the active action's slot for this ID (Blender 4.4+ slotted actions) or of the action."""
    action = getattr(anim_data, "action", None) if anim_data is not None else None
    if action is None:
        return None
    if hasattr(action, "layers") and getattr(anim_data, "action_slot", None) is not None:
        from bpy_extras import anim_utils  # deferred: Blender only

        channelbag = anim_utils.action_get_channelbag_for_slot(action, anim_data.action_slot)
        if channelbag is not None:
            return channelbag.fcurves
        if not hasattr(action, "fcurves"):
            return None
    return action.fcurves if hasattr(action, "fcurves") else None


def scene_fcurves(scene: bpy.types.Scene) -> Iterator[tuple[Any, bool]]:
    """(F-curve, is_driver) for every animation curve on the Scene."""
    anim = scene.animation_data
    if anim is None:
        return
    fcurves = action_fcurves(anim)
    for fcurve in list(fcurves) if fcurves is not None else []:
        yield fcurve, False
    for fcurve in list(anim.drivers):
        yield fcurve, True


def curves_under(scene: bpy.types.Scene, prefix: str) -> dict[str, tuple[Any, bool]]:
    """Curves whose path starts with `prefix.` (one shot's), by the rest of the path."""
    out: dict[str, tuple[Any, bool]] = {}
    for fcurve, is_driver in scene_fcurves(scene):
        if fcurve.data_path.startswith(prefix + "."):
            out[fcurve.data_path[len(prefix) + 1:]] = (fcurve, is_driver)
    return out


def remap(scene: bpy.types.Scene, moves: dict[tuple[str, int], tuple[str, int] | None]) -> int:
    """Rewrite shot-item data paths: `moves[(collection, old index)]` is the new place, None = delete.

    Every curve's new path is computed from its original path in one pass, so swaps
    never collide. Returns the number of curves changed.
    """
    anim = scene.animation_data
    if anim is None or not moves:
        return 0
    changed = 0
    removals: list[tuple[Any, bool]] = []
    for fcurve, is_driver in scene_fcurves(scene):
        match = PATH_RE.match(fcurve.data_path)
        if match is None:
            continue
        source = (match.group(1), int(match.group(2)))
        if source not in moves:
            continue
        target = moves[source]
        if target is None:
            removals.append((fcurve, is_driver))
        elif target != source:
            fcurve.data_path = item_path(*target) + match.group(3)
        else:
            continue
        changed += 1
    fcurves = action_fcurves(anim)
    for fcurve, is_driver in removals:
        log.info("Deleting the animation of %s: its shot left the archive", fcurve.data_path)
        (anim.drivers if is_driver else fcurves).remove(fcurve)
    if changed:
        log.debug("Moved %d animation curves with their shots", changed)
    return changed


def shift_prompt_keys(scene: bpy.types.Scene, shot_prefix: str, removed: int) -> None:
    """After prompt key `removed` is deleted: drop its curves, move the later keys' curves down one."""
    anim = scene.animation_data
    if anim is None:
        return
    key_re = re.compile(re.escape(shot_prefix) + r"\.prompt_keys\[(\d+)\](.*)$")
    fcurves = action_fcurves(anim)
    for fcurve, is_driver in list(scene_fcurves(scene)):
        match = key_re.match(fcurve.data_path)
        if match is None:
            continue
        index = int(match.group(1))
        if index == removed:
            (anim.drivers if is_driver else fcurves).remove(fcurve)
        elif index > removed:
            fcurve.data_path = f"{shot_prefix}.prompt_keys[{index - 1}]{match.group(2)}"
