"""The stand-in model: a pool of replicas simulated on a machine without GPUs.

``serve-ray --simulate-frame-s S [--simulate-load-s L]`` gives every worker replica this
executor instead of the diffusion runners: loading a pipeline sleeps L seconds, a frame sleeps S
seconds (in ``steps`` slices, so progress and cancel behave as with a model) and is a flat image
whose colour comes from its cache key. Sleeping costs no CPU, so a 2-core machine can hold 16
replicas and measure what the pool itself does: the ingress, Serve's routing, the shared cache,
fair shares and failures (benchmarks/bench_pool.py). Everything else is the real engine: the
job table, the cache keys, the FrameWriter, the multiplexer's loads and evictions.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from ..jobs.manager import LocalExecutor

if TYPE_CHECKING:
    from ..jobs.context import RunContext
    from ..jobs.job import Job

logger = logging.getLogger(__name__)


def standin_pixels(frame_key: str, width: int, height: int) -> np.ndarray:
    """A frame of the stand-in model: one flat colour from the frame's cache key (deterministic)."""
    colour = np.frombuffer(hashlib.sha256(frame_key.encode()).digest()[:3], dtype=np.uint8)
    return np.broadcast_to(colour, (height, width, 3)).copy()


class StandInExecutor(LocalExecutor):
    """Runs a job on the worker thread like ``LocalExecutor``, by sleeping instead of computing."""

    interleave = False  # one job at a time: FLOW shots are not batched together here

    def __init__(self, frame_s: float, load_s: float = 0.0) -> None:
        self.frame_s = frame_s
        self.load_s = load_s

    def load(self) -> str:
        """A 'pipeline': the time a load takes, nothing in memory."""
        time.sleep(self.load_s)
        return "stand-in"

    def run(self, context: RunContext, group: list[Job]) -> None:
        """Worker thread: load through the pipeline cache, then every missing frame in order."""
        job = group[0]
        request = job.request
        # 1. The pipeline, through the replica's cache (Serve's multiplexer on a replica).
        job.status, job.phase, job.started = "running", "loading", time.time()
        t0 = time.perf_counter()
        _, job.pipeline_reused = context.pipelines.get(job.key, self.load)
        job.timings["load_s"] = time.perf_counter() - t0
        job.phase = "generating"
        run_started = time.perf_counter()
        # 2. Frames in frame order (FLOW's order too); done ones (an earlier attempt's) are skipped.
        for frame in sorted(request.frames, key=lambda f: f.frame):
            if job.cancel_event.is_set():
                break
            if frame.frame in job.done or context.take_from_cache(job, frame):
                continue
            context.before_denoise(job, [frame])
            if not self._denoise(job, request.steps):
                break
            job.timings["model_s"] += self.frame_s
            context.store_frame(job, frame.frame, standin_pixels(job.frame_keys[frame.frame], request.width,
                                                                 request.height))
            job.update_eta(run_started, len(job.done) + 1 - len(job.cached))
        # 3. Written, then done (or cancelled part way), as a runner ends a job.
        context.complete(job, run_started)

    def _denoise(self, job: Job, steps: int) -> bool:
        """Sleep one frame's time in ``steps`` slices; False when cancelled meanwhile."""
        for step in range(1, steps + 1):
            time.sleep(self.frame_s / steps)
            if job.on_step(step):
                return False
        return True
