"""Is a received frame a whole PNG? Checked before a take counts the frame as done.

Plain Python (zlib): walks every chunk checking its CRC and inflates the image data to
its end, so a truncated, empty or corrupted file is caught without decoding pixels.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PngProblem(Exception):
    """What is wrong with a PNG, in words for the user."""


def png_chunks(f: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    """(kind, data) of each chunk of the PNG read from ``f``, its checksum checked; raises PngProblem.

    The one chunk walker of the add-on: frames are checked with it after download
    (`png_problem`) and against the job's size (`downloads.png_frame_problem`).
    """
    if f.read(8) != PNG_SIGNATURE:
        raise PngProblem("not a PNG (empty or damaged)")
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise PngProblem("truncated (the file ends before its last chunk)")
        length = int.from_bytes(head[:4], "big")
        kind = head[4:8]
        if length > (1 << 31) - 1:
            raise PngProblem("a chunk longer than PNG allows")
        data = f.read(length)
        crc = f.read(4)
        if len(data) < length or len(crc) < 4:
            raise PngProblem("truncated")
        if zlib.crc32(kind + data) != int.from_bytes(crc, "big"):
            raise PngProblem(f"bad checksum in its {kind.decode('latin-1')!r} chunk")
        yield kind, data


def checked(path: str | Path, walk: Callable[[BinaryIO], str | None]) -> str | None:
    """``walk`` over the open file, its PngProblem, zlib and OS errors turned into the problem's words."""
    try:
        with open(path, "rb") as f:
            return walk(f)
    except PngProblem as exc:
        return str(exc)
    except zlib.error as exc:
        return f"image data does not inflate ({exc})"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"


def png_problem(path: str | Path) -> str | None:
    """Why the PNG at ``path`` cannot be opened, or None when it is whole."""

    def walk(f: BinaryIO) -> str | None:
        inflater = zlib.decompressobj()
        seen_idat = False
        for kind, data in png_chunks(f):
            if kind == b"IDAT":
                seen_idat = True
                inflater.decompress(data, 1 << 16)
                while inflater.unconsumed_tail:
                    inflater.decompress(inflater.unconsumed_tail, 1 << 16)
            elif kind == b"IEND":
                return None if seen_idat and inflater.eof else "image data incomplete"
        return "truncated"  # pragma: no cover - png_chunks ends only by raising

    return checked(path, walk)
