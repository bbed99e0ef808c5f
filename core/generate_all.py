"""Generate All: every shot's engine job submitted up front, takes placed as jobs finish.

A cluster engine (``python -m engine serve-ray``) runs the jobs it receives together on
different replicas, so the add-on hands it all shots at once instead of one after the
other. Each shot runs `run_shot` on its own thread (it uploads, submits at once, then polls);
outcomes come back in the order the jobs finish, not the order of the shots. A single
engine simply queues the jobs: same takes, same total time. Never touches bpy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from .generate import Progress, ShotJob, TakeOutcome, run_shot

log = logging.getLogger(__name__)

# Threads that poll at once; past this, later shots are submitted as earlier ones finish.
MAX_PARALLEL_SHOTS = 32


@dataclass
class ShotFailure:
    """A shot whose run raised (engine unreachable, disk full...): reported, the others go on."""

    shot: str
    error: BaseException


def run_shots(
    jobs: list[ShotJob],
    client: Any,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    max_parallel: int = MAX_PARALLEL_SHOTS,
) -> Iterator[TakeOutcome | ShotFailure]:
    """Run every shot at once; yield each shot's outcome as soon as its job ends."""
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(jobs))),
                            thread_name_prefix="viewfinder-shot") as pool:
        futures = {pool.submit(run_shot, job, client, on_progress=on_progress, should_cancel=should_cancel): job
                   for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                yield future.result()
            except Exception as exc:  # noqa: BLE001 - one shot's failure must not stop the others
                log.debug("shot %s failed", job.shot, exc_info=True)
                yield ShotFailure(job.shot, exc)
