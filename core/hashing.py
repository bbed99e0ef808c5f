"""Content hashes of files: the one ``file_sha256`` of the add-on (control maps, references, uploads).

Plain Python, any thread.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Hashes remembered by what a file is on disk (device, inode, size, modification time in ns), as
# git's index does: a Generate All that finds every map unchanged stats each one instead of
# reading it (2,000 maps: 0.1 s read and hashed). A file rewritten in place changes its mtime.
_MEMO_SIZE = 65536
_memo: dict[tuple[str, int, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes (the engine names blobs by it); remembered while the file is
    unchanged on disk."""
    stat = os.stat(path)
    key = (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    known = _memo.get(key)
    if known is not None:
        return known
    sha = _read_sha256(path)
    if len(_memo) >= _MEMO_SIZE:
        _memo.pop(next(iter(_memo)))
    _memo[key] = sha
    return sha


def _read_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
