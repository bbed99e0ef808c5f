"""On-disk state: uploaded blobs and the frame cache, under one data directory.

Layout: ``blobs/<sha256>`` (control maps as uploaded) and
``cache/<key[:2]>/<key>.png`` (finished frames by content key). Every write goes to a
temporary file first and is renamed into place, so a crash never leaves half a file
that a later job would take for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

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


class Storage:
    """Blobs and cached frames. Thread-safe: files are only ever replaced atomically."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir).expanduser().resolve()
        self.blobs = self.root / "blobs"
        self.cache = self.root / "cache"
        for folder in (self.blobs, self.cache):
            folder.mkdir(parents=True, exist_ok=True)

    # Blobs ---------------------------------------------------------------
    def blob_path(self, sha: str) -> Path:
        return self.blobs / sha

    def has_blob(self, sha: str) -> bool:
        return self.blob_path(sha).is_file()

    def put_blob(self, sha: str, data: bytes) -> bool:
        """Store ``data`` under ``sha``; False when the bytes do not hash to ``sha``."""
        if hashlib.sha256(data).hexdigest() != sha:
            return False
        if not self.has_blob(sha):
            atomic_write(self.blob_path(sha), data)
        return True

    def read_blob(self, sha: str) -> bytes:
        return self.blob_path(sha).read_bytes()

    # Frame cache ---------------------------------------------------------
    def frame_path(self, key: str) -> Path:
        return self.cache / key[:2] / f"{key}.png"

    def has_frame(self, key: str) -> bool:
        return self.frame_path(key).is_file()

    def put_frame(self, key: str, png: bytes) -> Path:
        path = self.frame_path(key)
        atomic_write(path, png)
        return path
