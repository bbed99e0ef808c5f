# SPDX-License-Identifier: GPL-3.0-or-later
"""Viewfinder: AI previs in Blender.

Blocked shots (cameras bound to timeline markers) become exact control maps,
an out-of-process diffusion engine turns them into frames, and the frames land
on the Video Sequence Editor as takes. See README.md.

Submodules are imported inside register() so that the plain modules in core/
stay importable without Blender (tests, the engine's tooling).
"""

from __future__ import annotations

_registered: list = []


def register() -> None:
    from . import handlers, operators, panels, preferences
    from .props import pose as props_pose
    from .props import scene as props
    from .props import seg as props_seg

    for module in (preferences, props, props_pose, props_seg, operators, panels, handlers):
        module.register()
        _registered.append(module)


def unregister() -> None:
    while _registered:
        _registered.pop().unregister()
    # A disabled add-on leaves no engine process behind.
    from .core.client.process import shutdown_engine

    shutdown_engine()
