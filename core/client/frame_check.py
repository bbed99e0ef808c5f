"""Is a received frame a whole PNG? Checked before a take counts the frame as done.

Plain Python (zlib): walks every chunk checking its CRC and inflates the image data to
its end, so a truncated, empty or corrupted file is caught without decoding pixels.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_problem(path: str | Path) -> str | None:
    """Why the PNG at ``path`` cannot be opened, or None when it is whole."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_SIGNATURE:
                return "not a PNG (empty or damaged)"
            inflater = zlib.decompressobj()
            seen_idat = False
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return "truncated (the file ends before its last chunk)"
                length = int.from_bytes(head[:4], "big")
                kind = head[4:8]
                data = f.read(length)
                crc = f.read(4)
                if len(data) < length or len(crc) < 4:
                    return "truncated"
                if zlib.crc32(kind + data) != int.from_bytes(crc, "big"):
                    return f"bad checksum in its {kind.decode('latin-1')!r} chunk"
                if kind == b"IDAT":
                    seen_idat = True
                    inflater.decompress(data, 1 << 16)
                    while inflater.unconsumed_tail:
                        inflater.decompress(inflater.unconsumed_tail, 1 << 16)
                elif kind == b"IEND":
                    return None if seen_idat and inflater.eof else "image data incomplete"
    except zlib.error as exc:
        return f"image data does not inflate ({exc})"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
