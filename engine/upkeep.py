"""Upkeep of the data directory: verify and prune the cache, clean temporary files, pin the blobs
of running jobs (``python -m engine cache verify|prune`` and the engine at start and while serving).

Split from storage.py, which keeps the reads and writes every job makes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .storage import TEMP_GRACE_S, TMP_PREFIX, Storage, atomic_write, data_files, png_problem, remove_file

logger = logging.getLogger(__name__)


@dataclass
class CacheReport:
    """What ``verify``/``prune`` looked at and what they removed."""

    files: int = 0
    bytes: int = 0
    damaged: int = 0
    evicted: int = 0
    evicted_bytes: int = 0
    temporary: int = 0

    def line(self) -> str:
        return (f"{self.files} files, {self.bytes / 1024**2:.1f} MiB kept; {self.damaged} damaged removed, "
                f"{self.evicted} evicted ({self.evicted_bytes / 1024**2:.1f} MiB), {self.temporary} "
                "temporary files removed")


def clean_temporary(storage: Storage, older_than_s: float = 0.0) -> int:
    """Delete temp files left by a crash mid-write; returns how many."""
    removed = 0
    now = time.time()
    for _, path in data_files(storage):
        if path.name.startswith(TMP_PREFIX):
            try:
                if now - path.stat().st_mtime >= older_than_s:
                    path.unlink()
                    removed += 1
            except OSError:
                pass
    return removed


def verify(storage: Storage) -> CacheReport:
    """Check every blob against its sha256 and every frame as a PNG; delete the damaged."""
    report = CacheReport(temporary=clean_temporary(storage, TEMP_GRACE_S))
    for kind, path in list(data_files(storage)):
        if path.name.startswith(TMP_PREFIX) or not path.is_file():
            continue
        if kind == "blob":
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            problem = None if digest.hexdigest() == path.name else "sha256 does not match"
        else:
            problem = png_problem(path)
        if problem is not None:
            logger.warning("%s %s is damaged (%s); deleted", kind, path.name, problem)
            remove_file(path)
            report.damaged += 1
            continue
        report.files += 1
        report.bytes += path.stat().st_size
    return report


def prune(storage: Storage, quota_bytes: int, keep_recent_s: float = 600.0,
          keep: set[str] | frozenset[str] = frozenset()) -> CacheReport:
    """Evict the least recently used blobs and frames until the total is within ``quota_bytes``.

    Files used in the last ``keep_recent_s`` are kept, and so are the blobs named in ``keep``
    (those of queued and running jobs: ``in_use``), whatever their age.
    """
    keep = set(keep) | in_use(storage)
    report = CacheReport(temporary=clean_temporary(storage, TEMP_GRACE_S))
    entries: list[tuple[float, int, Path]] = []
    for _, path in data_files(storage):
        if path.name.startswith(TMP_PREFIX):
            continue
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    now = time.time()
    for mtime, size, path in sorted(entries, key=lambda e: e[0]):
        if total <= quota_bytes:
            break
        if now - mtime < keep_recent_s:
            break
        if path.name in keep:
            continue
        remove_file(path)
        total -= size
        report.evicted += 1
        report.evicted_bytes += size
    report.files = len(entries) - report.evicted
    report.bytes = total
    storage.recount(total)
    return report


# Blobs in use: an engine pins the blobs of its queued and running jobs in a file per process, so a
# `cache prune` from another process (or the keeper) never evicts what a job still has to read.

def _pins_dir(storage: Storage) -> Path:
    return storage.root / "in-use"


def pin(storage: Storage, shas: set[str]) -> None:
    """Record the blobs this process's jobs still need (any thread; replaces the last record)."""
    atomic_write(_pins_dir(storage) / f"{os.getpid()}.json", json.dumps(sorted(shas)).encode())


def in_use(storage: Storage) -> set[str]:
    """Every blob pinned by a live engine process on this data folder."""
    found: set[str] = set()
    folder = _pins_dir(storage)
    if not folder.is_dir():
        return found
    for path in folder.glob("*.json"):
        pid = path.stem
        if not pid.isdigit() or not _alive(int(pid)):
            remove_file(path)
            continue
        try:
            found.update(str(s) for s in json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
