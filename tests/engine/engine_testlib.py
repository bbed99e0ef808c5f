"""Helpers shared by the engine tests (control maps, job bodies, polling)."""

from __future__ import annotations

import io
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SIZE = 64
OOM_FRAME = 999  # the engine under test fails this frame with an injected out-of-memory error


SEAMS = ROOT / "tests" / "engine" / "seams"


def fault_env() -> dict[str, str]:
    """Environment of an engine under test that fails ``OOM_FRAME`` (the test seam in tests/engine/seams)."""
    path = [str(SEAMS), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"VIEWFINDER_ENGINE_TEST_OOM_FRAME": str(OOM_FRAME), "PYTHONPATH": os.pathsep.join(path)}


def fault_python(folder: Path) -> str:
    """An interpreter for ``LocalEngine`` (which drops PYTHONPATH, as Blender sets its own) that runs
    this Python with the test seam on its path; needs ``fault_env``'s OOM frame in the environment."""
    script = folder / "python-with-seams"
    script.write_text(f'#!/bin/sh\nPYTHONPATH="{SEAMS}" exec "{sys.executable}" "$@"\n')
    script.chmod(0o755)
    return str(script)


def start_local_engine(core: types.SimpleNamespace, data_dir: Path, python: str = sys.executable,
                       **env: str) -> Any:
    engine = core.process.LocalEngine(
        python, extension_dir=ROOT, data_dir=str(data_dir), log_path=data_dir / "engine.log",
        device="cpu", startup_timeout=120, env={"HF_HUB_OFFLINE": "1", **env},
        # Tiny models: keep every model set the tests use loaded, so no test pays a reload.
        max_pipelines=4,
    )
    engine.start()
    return engine


# Control maps -----------------------------------------------------------------------


def depth_png(phase: float, size: int = SIZE) -> bytes:
    """16-bit inverse-depth map: a near sphere-ish blob on a far ramp, moving with ``phase``."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    blob = np.exp(-(((x - 0.3 - 0.4 * phase) ** 2 + (y - 0.5) ** 2) / 0.02))
    value = np.clip(0.2 * (1 - y) + 0.8 * blob, 0, 1)
    buf = io.BytesIO()
    Image.fromarray((value * 65535).astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def pose_png(shift: int = 0, size: int = SIZE, black: bool = False) -> bytes:
    """A stick figure in OpenPose colours (or an all-black map)."""
    array = np.zeros((size, size, 3), np.uint8)
    if not black:
        cx = size // 2 + shift
        array[10:14, cx - 2 : cx + 2] = (255, 0, 0)
        array[14:40, cx - 1 : cx + 1] = (0, 255, 0)
        array[20:22, cx - 12 : cx + 12] = (0, 0, 255)
        array[40:58, cx - 8 : cx - 6] = (255, 255, 0)
        array[40:58, cx + 6 : cx + 8] = (255, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def make_job(models: dict[str, str], frames: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "shot": "test", "prompt": "a red car on a street", "style_prompt": "film still",
        "negative_prompt": "blurry", "seed": 42, "steps": 3, "guidance_scale": 5.0,
        "width": SIZE, "height": SIZE, "batch_size": 2, "device": "cpu",
        "models": {"base": models["base"], "controlnet_depth": models["depth"], "controlnet_pose": models["pose"]},
        "frames": frames,
    }
    job.update(overrides)
    return job


def wait_for(client: Any, job_id: str, timeout: float = 120.0,
             until: tuple[str, ...] = ("done", "failed", "cancelled")) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.status(job_id)
        if status["status"] in until:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {client.status(job_id)} after {timeout} s")


def read_png(path: str | Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB")).copy()


# Characters (issue 9) -----------------------------------------------------------------

A_ID, B_ID = 3, 5  # mask ids of the two test characters


def two_character_mask(size: int = SIZE, a: bool = True, b: bool = True) -> np.ndarray:
    """uint16 id mask: character A (id 3) a left band, B (id 5) a right band, background 0."""
    mask = np.zeros((size, size), np.uint16)
    if a:
        mask[size // 8:, size // 8: size * 7 // 16] = A_ID
    if b:
        mask[size // 8:, size * 9 // 16: size * 7 // 8] = B_ID
    return mask


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def noise_image(seed: int, size: int = 48) -> bytes:
    """A reference image: random colours (PNG)."""
    return png_bytes(np.random.default_rng(seed).integers(0, 255, (size, size, 3)).astype(np.uint8))
