"""Test seam: an out-of-memory error on one frame number, injected into engines under test.

Python imports ``sitecustomize`` at start-up from any folder on ``PYTHONPATH``; the engine
tests start their engines (local and Ray) with this folder there and
``VIEWFINDER_ENGINE_TEST_OOM_FRAME`` set (``engine_testlib.fault_env``). When ``engine.jobs.manager``
is imported, ``JobManager.before_denoise`` (a no-op in the engine) is replaced by one that
raises ``torch.OutOfMemoryError`` for that frame, so the tests can check that the engine
reports it and stays up. Nothing of this is in the engine's own code path.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from typing import Any

_FRAME = os.environ.get("VIEWFINDER_ENGINE_TEST_OOM_FRAME")


def _install(module: Any) -> None:
    frame = int(_FRAME or 0)

    def before_denoise(self: Any, job: Any, frames: list[Any]) -> None:
        if any(f.frame == frame for f in frames):
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory (injected by tests/engine/seams on frame "
                                         f"{frame})")

    module.JobManager.before_denoise = before_denoise


class _PatchJobs(importlib.abc.MetaPathFinder):
    """Finds ``engine.jobs.manager`` with the other finders and patches it once it has run."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "engine.jobs.manager":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                run = spec.loader.exec_module

                def exec_module(module: Any, run: Any = run) -> None:
                    run(module)
                    _install(module)

                spec.loader.exec_module = exec_module  # type: ignore[method-assign]
                return spec
        return None


if _FRAME:
    sys.meta_path.insert(0, _PatchJobs())
