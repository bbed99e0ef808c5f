"""What the benchmarks share: the repository root, the add-on's engine client loaded without
Blender, random-weight models by preset, synthetic control maps, and submit-run-fetch.

Each benchmark puts this folder on ``sys.path`` (``python benchmarks/bench_x.py`` does) and
imports from here, so a figure's setup reads the same in every script.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_core(name: str = "vf_core_bench") -> tuple[Any, Any]:
    """The add-on's engine client and process modules (core/client/), loaded as the package ``name``
    by path: the repository root's __init__ is Blender's."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "core" / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / "core")])
        assert spec and spec.loader
        package = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{name}.client.http"), importlib.import_module(f"{name}.client.process")


def make_tiny_models(out: Path | str, preset: str = "tiny", *extra: str, python: str = sys.executable) -> Path:
    """Random-weight models of ``preset`` in ``out``, written by the engine's own command, as a user would
    (``python -m engine make-tiny-models OUT --preset P [extra]``: ``out/sd15``, ``controlnet-depth``, ...)."""
    subprocess.run([python, "-m", "engine", "make-tiny-models", str(out), "--preset", preset, *extra], cwd=ROOT,
                   check=True, capture_output=True)
    return Path(out)


def model_paths(out: Path | str, *roles: str) -> dict[str, str]:
    """Paths of a make-tiny-models folder by role: base, depth, pose, draft_lora."""
    out = Path(out)
    where = {"base": out / "sd15", "depth": out / "controlnet-depth", "pose": out / "controlnet-pose",
             "draft_lora": out / "lcm-lora.safetensors"}
    return {role: str(where[role]) for role in roles}


def png(array: np.ndarray) -> bytes:
    """An image array (uint8 RGB/grey or uint16 depth) as PNG bytes."""
    from PIL import Image  # the engine's environment has it; Blender's (bench_ui.py) does not need it

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def depth_map(i: int, n: int, size: int) -> np.ndarray:
    """Frame ``i`` of ``n``: a floor and a blob moving left to right, 16-bit."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    blob = np.exp(-(((x - 0.2 - 0.6 * i / max(1, n - 1)) ** 2 + (y - 0.5) ** 2) / 0.02))
    return (np.clip(0.2 * (1 - y) + 0.8 * blob, 0, 1) * 65535).astype(np.uint16)


def pose_map(i: int, size: int) -> np.ndarray:
    """A stick figure's head and body, shifted with ``i``."""
    array = np.zeros((size, size, 3), np.uint8)
    cx = size // 4 + (i * 7) % (size // 2)
    array[size // 6 : size // 6 + 6, cx - 3 : cx + 3] = (255, 0, 0)
    array[size // 5 : size * 3 // 5, cx - 2 : cx + 2] = (0, 255, 0)
    return array


def run_job(client: Any, body: dict[str, Any], fetch_dir: Path, poll_s: float = 0.02) -> tuple[dict[str, Any], float]:
    """Submit ``body``, poll until it ends, fetch its frames into ``fetch_dir``: (final status, wall seconds)."""
    t0 = time.perf_counter()
    job_id = client.submit(body)
    while (status := client.status(job_id))["status"] not in ("done", "failed", "cancelled"):
        time.sleep(poll_s)
    fetch_dir.mkdir(parents=True, exist_ok=True)
    for n in status["frames"]:
        client.fetch_frame(job_id, n, str(fetch_dir / f"{job_id}-{n:04d}.png"))
    if status["status"] != "done":
        raise RuntimeError(f"benchmark job ended {status['status']}: {status['error']}")
    return status, time.perf_counter() - t0
