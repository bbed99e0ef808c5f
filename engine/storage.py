"""On-disk state: uploaded blobs and the frame cache, under one data directory.

Layout: ``blobs/<sha256>`` (control maps as uploaded) and
``cache/<key[:2]>/<key>.png`` (finished frames by content key). Every write goes to a
temporary file first and is renamed into place, so a crash never leaves half a file
that a later job would take for a finished one. What is read back is verified anyway
(a disk can still damage a file): blobs by their sha256, frames by a full PNG check,
and a damaged file is deleted so that it is uploaded or generated again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "viewfinder-engine"


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def canonical_hash(value: Any) -> str:
    """sha256 of canonical JSON: sorted keys, no whitespace, so equal data hashes equally."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


TMP_PREFIX = ".tmp-"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_problem(path: Path) -> str | None:
    """Why the PNG at ``path`` cannot be used, or None when it is whole.

    Walks every chunk checking its CRC and inflates the image data to its end, which
    catches a truncated or zero-byte file and flipped bits, without building pixels.
    """
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_SIGNATURE:
                return "not a PNG (damaged or empty file)"
            inflater = zlib.decompressobj()
            seen_idat = False
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return "truncated (no IEND chunk)"
                length = int.from_bytes(head[:4], "big")
                kind = head[4:8]
                data = f.read(length)
                crc = f.read(4)
                if len(data) < length or len(crc) < 4:
                    return "truncated"
                if zlib.crc32(kind + data) != int.from_bytes(crc, "big"):
                    return f"bad checksum in chunk {kind.decode('latin-1')!r}"
                if kind == b"IDAT":
                    seen_idat = True
                    inflater.decompress(data, 1 << 16)
                    while inflater.unconsumed_tail:
                        inflater.decompress(inflater.unconsumed_tail, 1 << 16)
                elif kind == b"IEND":
                    if not seen_idat or not inflater.eof:
                        return "image data incomplete"
                    return None
    except zlib.error as exc:
        return f"image data does not inflate ({exc})"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"


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


class Storage:
    """Blobs and cached frames. Thread-safe: files are only ever replaced atomically."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir).expanduser().resolve()
        self.blobs = self.root / "blobs"
        self.cache = self.root / "cache"
        for folder in (self.blobs, self.cache):
            folder.mkdir(parents=True, exist_ok=True)
        # key -> (size, mtime_ns, sha256) of frames known whole: a job reuses one on its stamp; it
        # is served only if its bytes still have that hash (a change that keeps size and mtime).
        self._verified: dict[str, tuple[int, int, str]] = {}
        self._verified_lock = threading.Lock()
        self._usage: int | None = None  # bytes of blobs and frames: scanned once, then kept up to date

    def usage(self) -> int:
        """Bytes the cache holds now (a scan the first time, then counted as files come and go)."""
        if self._usage is None:
            total = 0
            for _, path in _files(self):
                try:
                    total += path.stat().st_size
                except OSError:
                    pass
            self._usage = total
        return self._usage

    def _count(self, delta: int) -> None:
        if self._usage is not None:
            self._usage = max(0, self._usage + delta)

    # Blobs ---------------------------------------------------------------
    def blob_path(self, sha: str) -> Path:
        return self.blobs / sha

    def has_blob(self, sha: str) -> bool:
        return self.blob_path(sha).is_file()

    def blob_writer(self, sha: str, limit: int) -> BlobWriter:
        """A temp file in the blob folder that hashes and counts while it is written."""
        self.blobs.mkdir(parents=True, exist_ok=True)  # the data folder may have been deleted meanwhile
        return BlobWriter(self, sha, limit)

    def writable(self) -> bool:
        """The data folder is there (recreated if it was deleted) and takes a file: /health's check."""
        try:
            for folder in (self.blobs, self.cache):
                folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.blobs, prefix=TMP_PREFIX)
            os.close(fd)
            os.unlink(probe)
            return True
        except OSError:
            return False

    def put_blob(self, sha: str, data: bytes) -> bool:
        """Store ``data`` under ``sha``; False when the bytes do not hash to ``sha``."""
        if hashlib.sha256(data).hexdigest() != sha:
            return False
        if not self.has_blob(sha):
            atomic_write(self.blob_path(sha), data)
        return True

    def read_blob(self, sha: str) -> bytes:
        """The blob's bytes, checked against its sha256; a damaged blob is deleted and refused."""
        path = self.blob_path(sha)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:
            logger.warning("Blob %s is damaged on disk; deleting it", sha[:12])
            _unlink(path)
            from .contract.errors import EngineFault

            raise EngineFault(
                f"control map {sha} was damaged on the engine's disk and has been deleted; generate again and "
                "the add-on uploads it again", code="damaged_blob", status=409,
            )
        touch(path)
        return data

    def read_blob_head(self, sha: str, size: int) -> bytes:
        """The first ``size`` bytes of a blob (a header), without reading the rest."""
        with open(self.blob_path(sha), "rb") as f:
            return f.read(size)

    # Frame cache ---------------------------------------------------------
    def frame_path(self, key: str) -> Path:
        return self.cache / key[:2] / f"{key}.png"

    def has_frame(self, key: str) -> bool:
        """True when the frame is cached and whole; a damaged one is deleted (and so regenerated)."""
        path = self.frame_path(key)
        try:
            stat = path.stat()
        except OSError:
            return False
        stamp = (stat.st_size, stat.st_mtime_ns)
        with self._verified_lock:
            known = self._verified.get(key)
            if known is not None and known[:2] == stamp:
                return True
        problem = png_problem(path)
        if problem is not None:
            self._drop_frame(key, problem)
            return False
        self._remember(key, path.read_bytes())
        return True

    def read_frame(self, key: str) -> bytes | None:
        """A cached frame's bytes to serve, or None (and deleted) when they are not the bytes that
        were made or checked whole: the hash is verified on every read, so a frame damaged in
        place (same size, same mtime) is never served. A frame of an earlier run is checked whole."""
        try:
            data = self.frame_path(key).read_bytes()
        except OSError:
            return None
        with self._verified_lock:
            known = self._verified.get(key)
        if known is not None:
            if hashlib.sha256(data).hexdigest() == known[2]:
                return data
            self._drop_frame(key, "its bytes changed since it was made")
            return None
        if not self.has_frame(key):
            return None
        return self.read_frame(key)

    def _remember(self, key: str, data: bytes) -> None:
        path = self.frame_path(key)
        touch(path)
        stat = path.stat()
        with self._verified_lock:
            self._verified[key] = (stat.st_size, stat.st_mtime_ns, hashlib.sha256(data).hexdigest())

    def _drop_frame(self, key: str, problem: str) -> None:
        logger.warning("Cached frame %s is damaged (%s); deleting it so it is generated again", key[:12], problem)
        _unlink(self.frame_path(key))
        with self._verified_lock:
            self._verified.pop(key, None)

    def put_frame(self, key: str, png: bytes) -> Path:
        path = self.frame_path(key)
        atomic_write(path, png)
        self._count(len(png))
        self._remember(key, png)
        return path


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def touch(path: Path) -> None:
    """Mark a file as used now: the least recently used files are evicted first."""
    try:
        os.utime(path)
    except OSError:
        pass


class BlobWriter:
    """Writes an uploaded blob while it streams in: counted against ``limit``, hashed,
    renamed into place only when the hash matches. Use as a context manager."""

    def __init__(self, storage: Storage, sha: str, limit: int) -> None:
        self.storage = storage
        self.sha = sha
        self.limit = limit
        self.size = 0
        self._hash = hashlib.sha256()
        fd, self._tmp = tempfile.mkstemp(dir=storage.blobs, prefix=TMP_PREFIX)
        self._file: BinaryIO = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> bool:
        """Append a chunk; False (and nothing written) once the blob passes the limit."""
        self.size += len(chunk)
        if self.size > self.limit:
            return False
        self._hash.update(chunk)
        self._file.write(chunk)
        return True

    def commit(self) -> bool:
        """Rename into place; False when the bytes do not hash to the sha in the URL."""
        self._file.close()
        if self._hash.hexdigest() != self.sha:
            return False
        os.replace(self._tmp, self.storage.blob_path(self.sha))
        self.storage._count(self.size)
        return True

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._file.closed:
            self._file.close()
        _unlink(Path(self._tmp))


# Maintenance: `python -m engine cache verify|prune`, and at engine start ------------------------

TEMP_GRACE_S = 3600.0  # a temp file older than this is no write in progress


def _files(storage: Storage) -> Iterator[tuple[str, Path]]:
    if not storage.blobs.is_dir() or not storage.cache.is_dir():  # deleted under the engine
        return
    for path in storage.blobs.iterdir():
        yield "blob", path
    for sub in storage.cache.iterdir():
        if sub.is_dir():
            for path in sub.iterdir():
                yield "frame", path


def clean_temporary(storage: Storage, older_than_s: float = 0.0) -> int:
    """Delete temp files left by a crash mid-write; returns how many."""
    removed = 0
    now = time.time()
    for _, path in _files(storage):
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
    for kind, path in list(_files(storage)):
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
            _unlink(path)
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
    for _, path in _files(storage):
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
        _unlink(path)
        total -= size
        report.evicted += 1
        report.evicted_bytes += size
    report.files = len(entries) - report.evicted
    report.bytes = total
    storage._usage = total
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
            _unlink(path)
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
