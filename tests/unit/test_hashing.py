"""File hashes remembered while a file is unchanged on disk (core/hashing.py), and one-read folder
listings (core/timeline/paths.file_names): what keeps Generate All on an unchanged film cheap."""

from __future__ import annotations

import hashlib
import os

from helpers import load

hashing = load("core.hashing")
paths = load("core.timeline.paths")


def test_a_remembered_hash_is_the_files_and_follows_a_rewrite(tmp_path, monkeypatch):
    path = tmp_path / "0001.png"
    path.write_bytes(b"first")
    assert hashing.file_sha256(path) == hashlib.sha256(b"first").hexdigest()
    reads: list[object] = []
    real = hashing._read_sha256
    monkeypatch.setattr(hashing, "_read_sha256", lambda p: (reads.append(p), real(p))[1])
    assert hashing.file_sha256(path) == hashlib.sha256(b"first").hexdigest() and reads == []  # remembered
    # Same size, rewritten: the modification time moves, so the file is read again.
    stat = path.stat()
    path.write_bytes(b"other")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert hashing.file_sha256(path) == hashlib.sha256(b"other").hexdigest() and reads == [path]
    # Replaced by another file (a new inode) with the same size and time: read again too.
    other = tmp_path / "new.png"
    other.write_bytes(b"third")
    os.utime(other, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    os.replace(other, path)
    assert hashing.file_sha256(path) == hashlib.sha256(b"third").hexdigest() and len(reads) == 2


def test_file_names_lists_plain_files_once(tmp_path):
    (tmp_path / "0001.png").write_bytes(b"x")
    (tmp_path / "0002.npy").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert paths.file_names(tmp_path) == {"0001.png", "0002.npy"}
    assert paths.file_names(tmp_path / "missing") == set()
