"""Read the uncompressed, scanline, multi-layer OpenEXR files Viewfinder asks Cycles to write.

Blender's image loader only exposes a multi-layer file's first pass, and the
compositor's API changed in 5.0; a file is the one interface that is the same
in 4.2 and 5.x. We write EXR with `exr_codec='NONE'`, so a file is a header,
an offset table and one block per scanline: numpy reads all of it in one view.

Plain Python + numpy; runs on any thread.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_MAGIC = 20000630
_PIXEL_DTYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


class ExrError(ValueError):
    """The file is not an EXR this reader handles (and it says which part)."""


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode("latin-1"), end + 1


def _channels(value: bytes) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    pos = 0
    while value[pos] != 0:
        name, pos = _cstring(value, pos)
        pixel_type, _plinear, _xs, _ys = struct.unpack_from("<iiii", value, pos)
        pos += 16
        out.append((name, pixel_type))
    return out


def read_exr(path: Path) -> dict[str, np.ndarray]:
    """All channels of an uncompressed scanline EXR: name → float32 array (H, W), row 0 at the top.

    Float32 channels are read-only views into the file's bytes; copy one before writing to it.
    """
    data = Path(path).read_bytes()
    magic, version = struct.unpack_from("<ii", data, 0)
    if magic != _MAGIC:
        raise ExrError(f"{path} is not an OpenEXR file")
    if version & 0x1200:  # tiled or multi-part
        raise ExrError(f"{path}: tiled or multi-part EXR is not supported")

    pos = 8
    channels: list[tuple[str, int]] = []
    compression = -1
    window = (0, 0, 0, 0)
    while data[pos] != 0:
        name, pos = _cstring(data, pos)
        _type, pos = _cstring(data, pos)
        (size,) = struct.unpack_from("<i", data, pos)
        pos += 4
        value = data[pos : pos + size]
        pos += size
        if name == "channels":
            channels = _channels(value)
        elif name == "compression":
            compression = value[0]
        elif name == "dataWindow":
            window = struct.unpack("<iiii", value)
    pos += 1
    if compression != 0:
        raise ExrError(f"{path}: compression {compression} is not supported (write with exr_codec='NONE')")
    types = {t for _n, t in channels}
    if len(types) != 1:
        raise ExrError(f"{path}: mixed channel types {sorted(types)} are not supported")
    pixel = _PIXEL_DTYPES[types.pop()]

    width = window[2] - window[0] + 1
    height = window[3] - window[1] + 1
    pos += 8 * height  # offset table: blocks are stored in increasing y order
    block = np.dtype([("y", "<i4"), ("size", "<i4"), ("px", pixel, (len(channels), width))])
    rows = np.frombuffer(data, dtype=block, count=height, offset=pos)
    if not np.all(rows["size"] == len(channels) * width * pixel.itemsize):
        raise ExrError(f"{path}: unexpected scanline block size")
    pixels = rows["px"]  # (H, C, W); channels are stored in alphabetical order
    # 32-bit channels come back as read-only views of the file's bytes: no copy of the passes nobody
    # reads (Combined), and one copy fewer of those that are.
    return {name: pixels[:, i, :] if pixel == np.dtype("<f4") else pixels[:, i, :].astype(np.float32)
            for i, (name, _t) in enumerate(channels)}
