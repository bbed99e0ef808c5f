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
import zlib
from collections.abc import Iterator
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
            for _, path in data_files(self):
                try:
                    total += path.stat().st_size
                except OSError:
                    pass
            self._usage = total
        return self._usage

    def recount(self, total: int) -> None:
        """The bytes on disk after a prune counted them all (``upkeep.prune``)."""
        self._usage = total

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
            remove_file(path)
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
        remove_file(self.frame_path(key))
        with self._verified_lock:
            self._verified.pop(key, None)

    def put_frame(self, key: str, png: bytes) -> Path:
        path = self.frame_path(key)
        atomic_write(path, png)
        self._count(len(png))
        self._remember(key, png)
        return path


def remove_file(path: Path) -> None:
    """Delete a file that may already be gone."""
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
        remove_file(Path(self._tmp))


# Maintenance: `python -m engine cache verify|prune`, and at engine start ------------------------

TEMP_GRACE_S = 3600.0  # a temp file older than this is no write in progress


def data_files(storage: Storage) -> Iterator[tuple[str, Path]]:
    """Every blob and cached frame on disk, as ("blob" | "frame", path)."""
    if not storage.blobs.is_dir() or not storage.cache.is_dir():  # deleted under the engine
        return
    for path in storage.blobs.iterdir():
        yield "blob", path
    for sub in storage.cache.iterdir():
        if sub.is_dir():
            for path in sub.iterdir():
                yield "frame", path
