"""Image sizes from file headers (PNG, JPEG) without decoding: references are checked before they are sent.

Plain Python, any thread.
"""

from __future__ import annotations

import struct
from pathlib import Path

_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, ...): not DHT (C4), JPG (C8) or DAC (CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageHeaderError(ValueError):
    """The file is not a PNG or JPEG whose size can be read."""


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG or JPEG file; raises OSError if unreadable, ImageHeaderError if not an image."""
    with open(path, "rb") as handle:
        head = handle.read(32)
        if head[:8] == _PNG:
            if head[12:16] != b"IHDR":
                raise ImageHeaderError("a PNG without its IHDR header")
            width, height = struct.unpack(">II", head[16:24])
            return int(width), int(height)
        if head[:2] == b"\xff\xd8":
            handle.seek(2)
            return _jpeg_size(handle)
    raise ImageHeaderError("not a PNG or JPEG image")


def _jpeg_size(handle: object) -> tuple[int, int]:
    read = handle.read  # type: ignore[attr-defined]
    while True:
        byte = read(1)
        if not byte:
            break
        if byte != b"\xff":
            continue
        marker = read(1)
        while marker == b"\xff":  # fill bytes
            marker = read(1)
        if not marker:
            break
        code = marker[0]
        if code in (0xD8, 0x01) or 0xD0 <= code <= 0xD7:  # markers without a length
            continue
        length_bytes = read(2)
        if len(length_bytes) < 2:
            break
        (length,) = struct.unpack(">H", length_bytes)
        if code in _SOF:
            body = read(5)
            if len(body) < 5:
                break
            height, width = struct.unpack(">HH", body[1:5])
            return int(width), int(height)
        handle.seek(length - 2, 1)  # type: ignore[attr-defined]
    raise ImageHeaderError("a JPEG without a frame header (truncated?)")
