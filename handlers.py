"""Keep the shot list in step with the timeline markers.

Markers change without telling anyone (moving one sends no depsgraph update),
so in the UI a light timer compares the markers with the stored list twice a
second; handlers cover file loads and depsgraph updates. In background mode
timers never fire: `scene.viewfinder.shots` and every operator sync on use.
Runs on the main thread.
"""

from __future__ import annotations

import logging

import bpy
from bpy.app.handlers import persistent

from .core.scene import shots as shots_core

log = logging.getLogger(__name__)

TIMER_INTERVAL_S = 0.5


def _safe_sync(scene: bpy.types.Scene) -> None:
    try:
        shots_core.sync_shots(scene)
    except AttributeError as exc:
        if not shots_core.write_refused(exc):  # a bug in the sync: say so below
            log.exception("Viewfinder could not refresh the shots of scene '%s'", scene.name)
        # else: writing is not allowed in this context; the next call catches up
    except Exception:  # a handler must never take Blender down
        log.exception("Viewfinder could not refresh the shots of scene '%s'", scene.name)


@persistent
def on_load_post(*_args: object) -> None:
    for scene in bpy.data.scenes:
        _safe_sync(scene)


@persistent
def on_depsgraph_update_post(scene: bpy.types.Scene, *_args: object) -> None:
    _safe_sync(scene)


def _timer() -> float:
    scene = getattr(bpy.context, "scene", None)
    if scene is not None and hasattr(scene, "viewfinder"):
        try:
            shots_core.sync_shots(scene)
        except Exception:
            log.debug("shot refresh skipped", exc_info=True)
    return TIMER_INTERVAL_S


def register() -> None:
    bpy.app.handlers.load_post.append(on_load_post)
    bpy.app.handlers.depsgraph_update_post.append(on_depsgraph_update_post)
    if not bpy.app.background:
        bpy.app.timers.register(_timer, first_interval=TIMER_INTERVAL_S, persistent=True)


def unregister() -> None:
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    for handlers, func in (
        (bpy.app.handlers.depsgraph_update_post, on_depsgraph_update_post),
        (bpy.app.handlers.load_post, on_load_post),
    ):
        while func in handlers:
            handlers.remove(func)
