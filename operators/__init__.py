"""Operators: thin wrappers that check their input and call one plain function."""

from __future__ import annotations

from . import conditioning, engine, exports, generate, shots, takes

modules = (shots, generate, takes, exports, engine, conditioning)


def register() -> None:
    for module in modules:
        module.register()


def unregister() -> None:
    for module in reversed(modules):
        module.unregister()
