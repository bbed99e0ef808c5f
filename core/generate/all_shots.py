"""Generate All: every shot's engine job submitted up front, takes placed as jobs finish.

A cluster engine (``python -m engine serve-ray``) runs the jobs it receives together on
different replicas, so the add-on hands it all shots at once instead of one after the
other. `ShotsOnEngine` steps every shot's `EngineShot` (core/generate/shot.py) in turn, one
bounded step (an upload, the submit, a poll) of one shot per call, so the shots' jobs reach
the engine close together. Outcomes come back in the order the jobs finish,
not the order of the shots. A single engine simply queues the jobs: same takes, same total
time. Never touches bpy; bounded steps, so the UI's state machine (core/generate/run.py)
can call it between frames.

The engine's job quota (``GET /limits``: jobs queued or running per token) bounds the jobs in
flight: a film of any length keeps at most ``quota`` submitted, and the next shot goes as one
ends. Shots past it upload their maps and wait at the submit. A 429 (the token shared by
another client, or an engine without ``/limits``) is a wait of Retry-After, not a failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .shot import POLL_INTERVAL_S, EngineShot, Progress, ShotJob, TakeOutcome

log = logging.getLogger(__name__)

# Shots in flight at once; past this, later shots are submitted as earlier ones finish.
MAX_PARALLEL_SHOTS = 32


@dataclass
class ShotFailure:
    """A shot whose run raised (engine unreachable, disk full...): reported, the others go on."""

    shot: str
    error: BaseException


class ShotsOnEngine:
    """Many shots' engine jobs, one bounded step of one shot at a time. Any thread; never bpy."""

    def __init__(self, client: Any, *, on_progress: Callable[[Progress], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None, max_parallel: int = MAX_PARALLEL_SHOTS,
                 quota: int | None = None) -> None:
        self.client = client
        # Jobs submitted and not ended at most; None: read from the engine at the first step.
        self.quota = quota
        self._limits_read = quota is not None
        self.on_progress = on_progress
        self.should_cancel = should_cancel
        self.max_parallel = max(1, max_parallel)
        self.waiting: list[ShotJob] = []
        self.active: list[EngineShot] = []
        self._turn = 0  # the next active shot to poll
        self._quiet = 0  # polls in a row that found nothing new
        self.last_kind = ""  # what the last step did: "upload" (hash, upload, submit) or "poll"

    def add(self, job: ShotJob) -> None:
        self.waiting.append(job)

    @property
    def finished(self) -> bool:
        return not self.waiting and not self.active

    @property
    def in_flight(self) -> int:
        """Shots whose engine job is submitted and not yet ended."""
        return sum(1 for s in list(self.active) if s.phase == "poll")

    @property
    def held(self) -> int:
        """Shots waiting for room under the engine's quota (not yet submitted, ready or not)."""
        full = self.quota is not None and self.in_flight >= self.quota
        at_submit = sum(1 for s in list(self.active) if s.phase == "submit" and (full or s.throttled))
        return len(self.waiting) + at_submit if full or at_submit else 0

    def _read_limits(self) -> None:
        """The token's job quota from the engine (once; an engine without ``/limits`` leaves it
        to the 429s). On the thread that steps the shots: it is a request."""
        self._limits_read = True
        reader = getattr(self.client, "limits", None)
        if reader is None:
            return
        try:
            published = reader()
        except Exception:  # noqa: BLE001 - the quota is also learned from 429s
            log.debug("reading the engine's limits failed", exc_info=True)
            return
        quota = (published or {}).get("job_quota")
        if isinstance(quota, int) and not isinstance(quota, bool) and quota >= 1:
            self.quota = quota
            log.info("the engine takes %d jobs per token at once", quota)

    def cancel_running(self) -> None:
        """Ask the engine to stop every submitted job now (the run is being dropped, not stepped to its end)."""
        for shot in list(self.active):  # the engine thread may be ending one meanwhile
            if shot.job_id:
                try:
                    self.client.cancel(shot.job_id)
                except Exception:  # noqa: BLE001 - best effort: the engine may be gone already
                    log.debug("cancelling %s failed", shot.job_id, exc_info=True)

    def step(self) -> tuple[bool, TakeOutcome | ShotFailure | None]:
        """(worked, a shot that ended in this step or None). worked is False once every running
        shot was polled in a row without news: the caller may wait before the next step."""
        if not self._limits_read:
            self._read_limits()
        while self.waiting and len(self.active) < self.max_parallel:
            job = self.waiting.pop(0)
            self.active.append(EngineShot(job, self.client, on_progress=self.on_progress,
                                          should_cancel=self.should_cancel))
        if not self.active:
            return False, None
        # Round robin over every shot, whatever its phase; a shot ready to submit waits for the
        # others' uploads, so the jobs reach the engine in consecutive steps and a cluster
        # starts them side by side.
        # A shot ready to submit also waits while the quota is full, or Retry-After after a 429.
        uploading = any(s.phase in ("hash", "take", "upload") for s in self.active)
        full = self.quota is not None and self.in_flight >= self.quota
        cancelling = self.should_cancel is not None and self.should_cancel()  # held shots end at their turn
        turns = [s for s in self.active
                 if not (s.phase == "submit" and not cancelling and (uploading or full or s.throttled))]
        if not turns:
            return False, None
        self._turn %= len(turns)
        shot = turns[self._turn]
        self._turn += 1
        self.last_kind = "poll" if shot.submitted else "upload"
        try:
            if shot.needs_status:
                self._poll_together()
            worked = shot.step()
        except Exception as exc:  # noqa: BLE001 - one shot's failure must not stop the others
            log.debug("shot %s failed", shot.job.shot, exc_info=True)
            self.active.remove(shot)
            self._quiet = 0
            return True, ShotFailure(shot.job.shot, exc)
        if shot.outcome is not None:
            self.active.remove(shot)
            self._quiet = 0
            return True, shot.outcome
        if worked:
            self._quiet = 0
            return True, None
        self._quiet += 1
        if self._quiet >= len(self.active):
            self._quiet = 0
            return False, None
        return True, None

    def _poll_together(self) -> None:
        """One request for the statuses of every shot about to poll (an engine that predates
        ``GET /jobs?ids=`` leaves each shot to poll on its own)."""
        polling = [s for s in self.active if s.needs_status]
        if len(polling) < 2:
            return
        found = self.client.statuses([s.job_id for s in polling])
        for shot in polling:
            if found and shot.job_id in found:
                shot.offer(found[shot.job_id])


def run_shots(
    jobs: list[ShotJob],
    client: Any,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    max_parallel: int = MAX_PARALLEL_SHOTS,
) -> Iterator[TakeOutcome | ShotFailure]:
    """Run every shot at once; yield each shot's outcome as soon as its job ends (blocking loop)."""
    stage = ShotsOnEngine(client, on_progress=on_progress, should_cancel=should_cancel, max_parallel=max_parallel)
    for job in jobs:
        stage.add(job)
    while not stage.finished:
        worked, ended = stage.step()
        if ended is not None:
            yield ended
        elif not worked:
            time.sleep(POLL_INTERVAL_S)
