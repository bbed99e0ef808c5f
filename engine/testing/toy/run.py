"""Generate toy-world frames in this process: the engine's own JobManager, blobs from files, frames as arrays.

Used by benchmarks/bench_toy_world.py and tests/engine/test_toy_world.py; the same code path as an
HTTP job (the server hands requests to this JobManager).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np


def read(path: Path) -> np.ndarray:
    """An RGB PNG as (H, W, 3) uint8, a 16-bit one (depth, masks) as (H, W) uint16."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img if img.mode in ("I;16", "I;16B", "I;16L", "I") else img.convert("RGB"))


class ToyEngine:
    """One JobManager over a data folder; ``run`` submits one job and waits for its frames."""

    def __init__(self, data_dir: Path, models: Path, steps: int = 20, guidance: float = 5.0, size: int = 64) -> None:
        from ...jobs.manager import JobManager
        from ...storage import Storage

        self.storage = Storage(data_dir)
        self.manager = JobManager(self.storage, default_device="cpu", max_pipelines=1)
        self.manager.start()
        self.models = {"base": str(models / "sd15"), "controlnet_depth": str(models / "controlnet-depth"),
                       "controlnet_pose": str(models / "controlnet-pose")}
        self.steps, self.guidance, self.size = steps, guidance, size
        self.jobs, self.seconds = 0, 0.0

    def blob(self, path: Path) -> str:
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        self.storage.put_blob(sha, data)
        return sha

    def frame(self, n: int, depth: Path, pose: Path | None = None, flow: Path | None = None,
              mask: Path | None = None, **values: Any) -> dict[str, Any]:
        """A frame of a request, its maps uploaded; ``values``: per-frame values (weights, prompt_weights)."""
        entry: dict[str, Any] = {"frame": n, "depth": self.blob(depth), **values}
        for key, path in (("pose", pose), ("flow", flow), ("mask", mask)):
            if path is not None:
                entry[key] = self.blob(path)
        return entry

    def run(self, frames: list[dict[str, Any]], prompt: str, seed: int, **extra: Any) -> dict[int, np.ndarray]:
        """One job; returns {frame: image}. Raises RuntimeError when the job does not end done."""
        from ...contract.schema import JobRequest

        request = JobRequest.model_validate({
            "shot": "toy", "prompt": prompt, "seed": seed, "steps": self.steps, "guidance_scale": self.guidance,
            "width": self.size, "height": self.size, "batch_size": 8, "device": "cpu", "models": self.models,
            "frames": frames, **extra})
        started = time.perf_counter()
        job = self.manager.submit(request)
        while job.status not in ("done", "failed", "cancelled"):
            time.sleep(0.02)
        if job.status != "done":
            raise RuntimeError(f"job {job.status}: {job.error}")
        self.jobs += 1
        self.seconds += time.perf_counter() - started
        return {n: read(self.storage.frame_path(key)) for n, key in job.done.items()}

    def stop(self) -> None:
        self.manager.stop()
