"""Bounded reads of what an engine sends back: every answer capped in bytes and in total time.

An engine is a program on another machine, possibly not a friendly one (issue 22): a 300 MB
status JSON, an endless frame body, a frame dripped a byte every 20 s. `read_capped` and
`stream_to_file` stop at ``limit`` bytes, at a wall-clock ``deadline`` and when
``should_cancel()`` turns true (Esc), whichever comes first, raising `DownloadRefused`.
`png_frame_problem` checks a received frame against the size the job asked for, header and
image data, without decoding a pixel (Blender decodes it only once it is accepted).

Plain Python + requests; any thread (the engine client runs on worker threads).
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

from .frame_check import PNG_SIGNATURE, checked, png_chunks

READ_CHUNK = 1 << 16
# Bytes per pixel of the largest PNG pixel (16-bit RGBA) and the slack of its container.
_MAX_PNG_BYTES_PER_PIXEL = 8
_PNG_SLACK = 1 << 20


class DownloadRefused(Exception):
    """An answer past its size or time bound, or cancelled; ``reason`` says which."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # "too_large", "too_slow" or "cancelled"


def frame_byte_limit(width: int, height: int) -> int:
    """The most bytes a PNG of width x height can sensibly take (16-bit RGBA, stored uncompressed)."""
    return height * (1 + width * _MAX_PNG_BYTES_PER_PIXEL) + _PNG_SLACK


def _chunks(response: Any) -> Any:
    """The body as it arrives: ``read1`` returns what one read brought, so a drip cannot hold a
    whole 64 KiB read (and the deadline) hostage; an older urllib3 falls back to ``read``."""
    raw = response.raw
    read = getattr(raw, "read1", None) or raw.read
    while True:
        data = read(READ_CHUNK)
        if not data:
            return
        yield data


def _check(received: int, limit: int, deadline: float, should_cancel: Callable[[], bool] | None,
           what: str) -> None:
    if received > limit:
        raise DownloadRefused(f"{what} is larger than the {limit} bytes it can be", "too_large")
    if time.monotonic() > deadline:
        raise DownloadRefused(f"{what} did not arrive in time", "too_slow")
    if should_cancel is not None and should_cancel():
        raise DownloadRefused(f"{what}: cancelled", "cancelled")


def _declared_too_large(response: Any, limit: int, what: str) -> None:
    declared = response.headers.get("Content-Length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        raise DownloadRefused(f"{what} is {int(declared)} bytes, larger than the {limit} it can be", "too_large")


def read_capped(response: Any, *, limit: int, deadline: float, should_cancel: Callable[[], bool] | None = None,
                what: str = "the engine's answer") -> bytes:
    """The whole body of a streamed response, at most ``limit`` bytes, before ``deadline``."""
    _declared_too_large(response, limit, what)
    body = bytearray()
    for data in _chunks(response):
        body += data
        _check(len(body), limit, deadline, should_cancel, what)
    return bytes(body)


def stream_to_file(response: Any, out: IO[bytes], *, limit: int, deadline: float,
                   should_cancel: Callable[[], bool] | None = None, what: str = "the frame",
                   check_head: Callable[[bytes], str | None] | None = None) -> int:
    """Write a streamed body to ``out`` within the bounds; ``check_head`` sees the first 33 bytes
    (a PNG's signature and IHDR) as soon as they arrive, and its complaint ends the download."""
    _declared_too_large(response, limit, what)
    received, head, checked = 0, b"", check_head is None
    for data in _chunks(response):
        received += len(data)
        _check(received, limit, deadline, should_cancel, what)
        if not checked:
            head += data[: 33 - len(head)]
            if len(head) >= 33:
                checked = True
                problem = check_head(head)  # type: ignore[misc]
                if problem:
                    raise DownloadRefused(f"{what} {problem}", "wrong_size")
        out.write(data)
    if not checked and check_head is not None:
        problem = check_head(head)
        if problem:
            raise DownloadRefused(f"{what} {problem}", "wrong_size")
    return received


def png_head_problem(head: bytes, size: tuple[int, int]) -> str | None:
    """Why a PNG starting with ``head`` is not a width x height image (None: it says it is)."""
    if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return "is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    if (width, height) != size:
        return f"is {width}x{height} pixels, not the {size[0]}x{size[1]} the job asked for"
    return None


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def png_frame_problem(path: str | Path, size: tuple[int, int]) -> str | None:
    """Why the PNG at ``path`` is not a whole width x height frame, or None.

    Walks every chunk (checksums), allows exactly one IHDR, of the job's size, and inflates the
    image data to exactly the bytes that size needs: a file whose headers lie, or whose data
    inflates past its size (a decompression bomb), is refused without decoding a pixel.
    """

    def walk(f: BinaryIO) -> str | None:
        inflater = zlib.decompressobj()
        expected: int | None = None
        inflated = 0
        for kind, data in png_chunks(f):
            if kind == b"IHDR":
                if expected is not None or len(data) != 13:
                    return "more than one image header (IHDR)"
                problem, expected = _frame_header(data, size)
                if problem:
                    return problem
            elif expected is None:
                return "no image header (IHDR) first"
            elif kind == b"IDAT":
                inflated += len(inflater.decompress(data, 1 << 16))
                while inflater.unconsumed_tail and inflated <= expected:
                    inflated += len(inflater.decompress(inflater.unconsumed_tail, 1 << 16))
                if inflated > expected:
                    return f"image data inflating past its {size[0]}x{size[1]} pixels"
            elif kind == b"IEND":
                return None if inflated and inflater.eof and inflated == expected else "image data incomplete"
        return "truncated"  # pragma: no cover - png_chunks ends only by raising

    return checked(path, walk)


def _frame_header(data: bytes, size: tuple[int, int]) -> tuple[str | None, int]:
    """(problem, the inflated bytes the image needs) from an IHDR chunk's data."""
    width, height, depth, color, _comp, _filter, interlace = struct.unpack(">IIBBBBB", data)
    if (width, height) != size:
        return f"{width}x{height} pixels, not the {size[0]}x{size[1]} the job asked for", 0
    if color not in _CHANNELS or depth not in (1, 2, 4, 8, 16) or interlace:
        return "not a frame the engine writes (colour type, depth or interlace)", 0
    return None, height * (1 + (width * _CHANNELS[color] * depth + 7) // 8)
