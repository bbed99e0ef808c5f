"""Helpers for tests: load the repository's plain modules without Blender."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "viewfinder_src"


def source_package() -> ModuleType:
    """The repository root as a package named `viewfinder_src`.

    The root `__init__.py` imports nothing at import time, so plain modules
    (`viewfinder_src.core.shots`, …) load without bpy.
    """
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return sys.modules[PACKAGE]


def load(name: str) -> ModuleType:
    """Import `name` (e.g. "core.scene.shots") from the repository without Blender."""
    source_package()
    return importlib.import_module(f"{PACKAGE}.{name}")
