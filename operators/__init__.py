"""Operators: thin wrappers that check their input and call one plain function."""

from __future__ import annotations

from . import characters, conditioning, engine, exports, finalize, generate, pose, prompt_keys, shots, takes

modules = (shots, conditioning, generate, takes, exports, engine, pose, prompt_keys, characters, finalize)


def register() -> None:
    for module in modules:
        module.register()


def unregister() -> None:
    for module in reversed(modules):
        module.unregister()
