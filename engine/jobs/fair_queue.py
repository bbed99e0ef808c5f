"""The job queue of a shared engine: round robin across the tokens that have work waiting.

A FIFO let one token's 640 frames hold another token's 1-frame job for minutes (issue 22).
Here each owner (token name) has its own FIFO, and the worker takes the next job from the
owner after the one it served last: with two tokens waiting, jobs alternate; a single token
keeps its own submission order. Same calls as ``queue.Queue`` (``put``, ``get``), so the Ray
ingress's dispatcher uses it unchanged. ``None`` is the stop sentinel, served before anything.

Any thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque

DEFAULT_OWNER = "default"


class FairQueue:
    def __init__(self) -> None:
        self._owners: OrderedDict[str, deque[str]] = OrderedDict()  # rotation order: next to serve first
        self._stop = 0
        self._ready = threading.Condition()

    def put(self, job_id: str | None, owner: str = DEFAULT_OWNER) -> None:
        with self._ready:
            if job_id is None:
                self._stop += 1
            else:
                self._owners.setdefault(owner, deque()).append(job_id)
            self._ready.notify()

    def get(self) -> str | None:
        """The next job id (blocking), round robin across owners; None to stop."""
        with self._ready:
            while not self._stop and not self._owners:
                self._ready.wait()
            if self._stop:
                self._stop -= 1
                return None
            owner, jobs = next(iter(self._owners.items()))
            job_id = jobs.popleft()
            del self._owners[owner]
            if jobs:
                self._owners[owner] = jobs  # to the back of the rotation
            return job_id

    def qsize(self) -> int:
        with self._ready:
            return sum(len(jobs) for jobs in self._owners.values())
