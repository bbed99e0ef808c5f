"""Panels and lists: they draw and call operators, nothing more."""

from __future__ import annotations

from . import sequencer, view3d

modules = (view3d, sequencer)


def register() -> None:
    for module in modules:
        module.register()


def unregister() -> None:
    for module in reversed(modules):
        module.unregister()
