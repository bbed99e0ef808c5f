"""The cache quota while writing, and each token's share of it (issue 22).

The keeper (``start_cache_keeper``) prunes every ten minutes; between two passes uploads went
in unchecked, so 1 GB landed in 3.6 s under ``--cache-quota 100M``. Here every upload is
admitted first: past the quota the least recently used files are evicted at once (never a
blob a queued or running job names, nor one uploaded in the last minute for a job about to
be submitted); if that cannot make room the upload is refused with 507 ``cache_full``. With a
token file, one token may upload at most ``token_share`` of the quota in any ten minutes
(507 ``token_cache_full``), so one person cannot push everyone's cache out.

Any thread (HTTP handlers); one lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from .contract.errors import EngineFault
from .storage import Storage
from .upkeep import prune

WINDOW_S = 600.0
UNSUBMITTED_GRACE_S = 60.0


class CacheBudget:
    def __init__(self, storage: Storage, quota: int, in_use: Callable[[], set[str]],
                 token_share: float | None = None) -> None:
        self.storage = storage
        self.quota = quota
        self.in_use = in_use
        self.token_share = token_share
        self._lock = threading.Lock()
        self._recent: dict[str, deque[tuple[float, int]]] = {}

    def admit(self, owner: str, size: int) -> None:
        """Make room for ``size`` bytes from ``owner``, or refuse (507)."""
        with self._lock:
            if self.token_share is not None:
                now = time.monotonic()
                recent = self._recent.setdefault(owner, deque())
                while recent and now - recent[0][0] > WINDOW_S:
                    recent.popleft()
                share = int(self.quota * self.token_share)
                if sum(n for _, n in recent) + size > share:
                    raise EngineFault(f"this token uploaded its share of the engine's cache ({share} bytes in "
                                      f"{WINDOW_S / 60:.0f} minutes); wait, or ask whoever runs the engine",
                                      code="token_cache_full", status=507, field="body")
                recent.append((now, size))
            if self.storage.usage() + size <= self.quota:
                return
            report = prune(self.storage, max(0, self.quota - size), keep_recent_s=UNSUBMITTED_GRACE_S,
                           keep=self.in_use())
            if report.bytes + size > self.quota:
                raise EngineFault(f"the engine's cache ({self.quota} bytes, --cache-quota) is full of work in "
                                  "progress; try again when jobs have finished", code="cache_full", status=507,
                                  field="body")
