"""The engine's one image decoder: every image it opens from a request goes through here.

Control maps, masks, character and video references, palette and style images and Finalize's
source frames are all files a client chose. A small file can claim, or decode to, a huge
image: a PNG whose second IHDR says 12000x12000 behind a first that says 64x64, a 17 kB 1-bit
12000² PNG. So the bound is checked on the decoder's own state, the size PIL parsed and will
allocate, after it read every header and before it decodes a pixel; never on a header read
beside it. The caller gives the bound (the job's exact size for a map, its pixels for a
Finalize source, the reference limit for a reference) and the formats it takes. PIL's
process-wide ``MAX_IMAGE_PIXELS`` is a backstop for anything opened elsewhere.

Any thread. Errors are ``BadRequest`` naming the field: ``map_size_mismatch``,
``image_too_large`` or ``bad_map`` (not an image of the allowed formats, or damaged).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .api import limits
from .contract.errors import BadRequest

if TYPE_CHECKING:
    from PIL.Image import Image

MAPS = ("PNG",)
BACKSTOP_PIXELS = 4 * limits.MAX_SIDE * limits.MAX_SIDE
PICTURES = ("PNG", "JPEG")


def _pil() -> object:
    from PIL import Image

    # Backstop: PIL refuses past twice this (134 MP) whatever opens an image in this process;
    # below it, the bound of each call below names the size it found.
    if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > BACKSTOP_PIXELS:
        Image.MAX_IMAGE_PIXELS = BACKSTOP_PIXELS
    return Image


def _open_checked(source: bytes | Path, *, max_pixels: int, size: tuple[int, int] | None,
                  formats: tuple[str, ...], field: str, what: str) -> Image:
    """The opened (not decoded) image, its parsed size within the bound."""
    Image = _pil()
    from PIL import UnidentifiedImageError

    # A path is opened by PIL, which closes it once the pixels are loaded (or on close()).
    stream = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # type: ignore[attr-defined]
            img = Image.open(stream, formats=list(formats))  # type: ignore[attr-defined]
    except Image.DecompressionBombError:  # type: ignore[attr-defined]
        wanted = f"the job's {size[0]}x{size[1]}" if size else f"the {max_pixels} pixels allowed"
        raise BadRequest(f"{field}: the {what} is far larger than {wanted} (over {2 * BACKSTOP_PIXELS} pixels)",
                         field=field, code="map_size_mismatch" if size else "image_too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadRequest(f"{field}: the {what} is not a readable {' or '.join(formats)} ({_reason(exc)}); "
                         "render or export it again", field=field, code="bad_map") from None
    width, height = img.size  # what the decoder will allocate and fill, every header read
    if size is not None and (width, height) != size:
        img.close()
        raise BadRequest(f"{field}: the {what} is {width}x{height} pixels but the job is {size[0]}x{size[1]}; "
                         "render it at the job's size", field=field, code="map_size_mismatch")
    if width * height > max_pixels:
        img.close()
        raise BadRequest(f"{field}: the {what} is {width}x{height} pixels, more than the {max_pixels} allowed "
                         "here; scale it down", field=field, code="image_too_large")
    return img


def _reason(exc: BaseException) -> str:
    text = str(exc).split("\n")[0][:120]
    return text or type(exc).__name__


def decode(source: bytes | Path, *, max_pixels: int, size: tuple[int, int] | None = None,
           formats: tuple[str, ...] = MAPS, field: str = "image", what: str = "image") -> Image:
    """The decoded image (pixels loaded, file closed), refused before decoding past the bound."""
    img = _open_checked(source, max_pixels=max_pixels, size=size, formats=formats, field=field, what=what)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        img.close()
        raise BadRequest(f"{field}: the {what} is damaged ({_reason(exc)}); render or export it again",
                         field=field, code="bad_map") from None
    return img


def check(source: bytes | Path, *, max_pixels: int, size: tuple[int, int] | None = None,
          formats: tuple[str, ...] = MAPS, field: str = "image", what: str = "image") -> tuple[str, str]:
    """At submit: the image opens as one of ``formats`` within the bound and its chunks are whole
    (``verify``: checksums, no pixel decoded). Returns (format, mode)."""
    img = _open_checked(source, max_pixels=max_pixels, size=size, formats=formats, field=field, what=what)
    fmt, mode = str(img.format), str(img.mode)
    try:
        img.verify()
    except (OSError, SyntaxError, ValueError, EOFError, AttributeError) as exc:
        raise BadRequest(f"{field}: the {what} is damaged ({_reason(exc)}); render or export it again",
                         field=field, code="bad_map") from None
    finally:
        img.close()
    return fmt, mode
