"""Where Viewfinder writes: `//viewfinder/<shot>/{conditioning,takes}/` next to the .blend.

Unsaved files write under a temporary project folder, and callers report it.
Runs on any thread (no bpy access here: callers pass in what they read).
"""

from __future__ import annotations

import os
import re
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

PROJECT_FOLDER = "viewfinder"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Project:
    """The project folder and whether it is a temporary one (unsaved .blend)."""

    root: Path
    temporary: bool

    def shot_dir(self, shot_name: str) -> Path:
        return self.root / folder_name(shot_name)

    def conditioning_dir(self, shot_name: str) -> Path:
        return self.shot_dir(shot_name) / "conditioning"

    def takes_dir(self, shot_name: str) -> Path:
        return self.shot_dir(shot_name) / "takes"

    def describe(self) -> str:
        if self.temporary:
            return f"{self.root} (temporary: save the .blend to keep frames next to it)"
        return str(self.root)


def project_for(blend_filepath: str, scene_name: str, output_override: str = "") -> Project:
    """The project folder for a .blend path ("" when unsaved).

    `output_override` (the add-on preference) replaces the folder next to the
    .blend; a relative override is taken relative to the .blend's folder.
    """
    if output_override:
        base = Path(output_override)
        if not base.is_absolute() and blend_filepath:
            base = Path(blend_filepath).parent / base
        if base.is_absolute():
            return Project(base / _stem(blend_filepath, scene_name), False)
    if blend_filepath:
        return Project(Path(blend_filepath).parent / PROJECT_FOLDER, False)
    unsaved = Path(tempfile.gettempdir()) / "viewfinder-unsaved" / folder_name(scene_name)
    return Project(unsaved, True)


def _stem(blend_filepath: str, scene_name: str) -> str:
    return folder_name(Path(blend_filepath).stem if blend_filepath else scene_name)


def folder_name(shot_name: str) -> str:
    """A file-system-safe folder name for a shot, stable for a given name."""
    cleaned = _UNSAFE.sub("_", shot_name).strip("._") or "shot"
    if cleaned != shot_name:
        # Keep names that differ only in unsafe characters apart.
        cleaned = f"{cleaned}_{zlib.crc32(shot_name.encode('utf-8')) & 0xFFFF:04x}"
    return cleaned


def frame_name(frame: int, ext: str = "png") -> str:
    """NNNN: the timeline frame, zero-padded to four digits."""
    return f"{frame:04d}.{ext}"


def take_name(index: int) -> str:
    return f"{index:03d}"


def next_take_index(takes_dir: Path) -> int:
    """The next free take number in a shot's takes folder (1 for the first)."""
    used = [int(p.name) for p in takes_dir.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit()] \
        if takes_dir.is_dir() else []
    return max(used, default=0) + 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either nothing or all of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half-files behind
        raise


def file_names(folder: Path) -> set[str]:
    """The names of the plain files in ``folder`` (empty when it is missing), from one directory read:
    checking a shot's thousand frames one by one costs a thousand stat calls."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name for entry in entries if entry.is_file()}
    except OSError:
        return set()
