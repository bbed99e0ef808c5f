"""Panels and lists: they draw and call operators, nothing more."""

from __future__ import annotations

from . import characters, menus, prompt_keys, seg, sequencer, view3d

modules = (view3d, prompt_keys, characters, sequencer, menus, seg)


def register() -> None:
    for module in modules:
        module.register()


def unregister() -> None:
    for module in reversed(modules):
        module.unregister()
