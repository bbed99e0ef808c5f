"""Blender properties of the add-on: ``scene.viewfinder`` with its shots and prompt keys (scene.py),
the character bible it holds (characters.py, registered by scene.py) and the pose overrides on
armatures (pose.py). Imported by the add-on's register() only: it needs bpy."""

from __future__ import annotations

from . import pose, scene


def register() -> None:
    scene.register()
    pose.register()


def unregister() -> None:
    pose.unregister()
    scene.unregister()
