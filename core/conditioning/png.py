"""Write and read PNG with numpy and zlib: 16-bit grayscale (depth, masks) and 8-bit RGB (pose).

Blender's own image saving goes through colour management and an image
datablock per frame; writing the bytes ourselves is exact, faster, and keeps
16 bits (tests decode the files back to prove it).

Plain Python + numpy; runs on any thread.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Level 1: control maps are mostly flat areas, where level 1 compresses nearly
# as well as level 6 at a fraction of the time (it is on the per-frame budget).
_LEVEL = 1


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes for uint16 (H, W) grayscale or uint8 (H, W, 3) RGB; row 0 is the top."""
    if pixels.dtype == np.uint16 and pixels.ndim == 2:
        bit_depth, color_type = 16, 0
        rows = pixels.astype(">u2").view(np.uint8).reshape(pixels.shape[0], -1)
    elif pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3:
        bit_depth, color_type = 8, 2
        rows = pixels.reshape(pixels.shape[0], -1)
    elif pixels.dtype == np.uint8 and pixels.ndim == 2:
        bit_depth, color_type = 8, 0
        rows = pixels
    else:
        raise ValueError(f"unsupported PNG pixels: dtype {pixels.dtype}, shape {pixels.shape}")
    height, width = pixels.shape[:2]
    raw = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    raw[:, 0] = 0  # filter type None on every row
    raw[:, 1:] = rows
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), _LEVEL))
        + _chunk(b"IEND", b"")
    )


def write_png(path: Path, pixels: np.ndarray) -> None:
    Path(path).write_bytes(encode_png(pixels))


def _unfilter(raw: np.ndarray, bpp: int) -> np.ndarray:
    out = np.zeros((raw.shape[0], raw.shape[1] - 1), dtype=np.uint8)
    prev = np.zeros(raw.shape[1] - 1, dtype=np.int32)
    for y in range(raw.shape[0]):
        kind = raw[y, 0]
        line = raw[y, 1:].astype(np.int32)
        cur = np.zeros_like(line)
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prev) & 0xFF
        else:  # Sub, Average, Paeth: byte by byte (only readers of foreign files need these)
            for x in range(line.size):
                a = cur[x - bpp] if x >= bpp else 0
                b = prev[x]
                c = prev[x - bpp] if x >= bpp else 0
                if kind == 1:
                    pred = a
                elif kind == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (line[x] + pred) & 0xFF
        out[y] = cur
        prev = cur
    return out


def read_png(path: Path) -> np.ndarray:
    """Decode a non-interlaced 8/16-bit gray or RGB(A) PNG: uint16 (H, W) or uint8 (H, W[, C])."""
    data = Path(path).read_bytes()
    if data[:8] != _SIGNATURE:
        raise ValueError(f"{path} is not a PNG")
    pos, idat = 8, b""
    width = height = bit_depth = color_type = 0
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, bit_depth, color_type, _c, _f, interlace = struct.unpack(">IIBBBBB", body)
            if interlace:
                raise ValueError(f"{path}: interlaced PNG is not supported")
        elif kind == b"IDAT":
            idat += body
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    bpp = channels * bit_depth // 8
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, width * bpp + 1)
    pixels = _unfilter(raw, bpp)
    if bit_depth == 16:
        pixels = pixels.view(">u2").astype(np.uint16)
    pixels = pixels.reshape(height, width, channels)
    return pixels[:, :, 0] if channels == 1 else pixels
