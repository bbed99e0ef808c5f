"""Image codecs of the engine: control-map PNGs to tensors, PNGs to pixels and pixels to PNG.

The one place the engine reads and writes PNG bytes (frames, control maps, references).
"""

from __future__ import annotations

import functools
import io
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image


def decode_depth(png: bytes, size: tuple[int, int] | None = None) -> torch.Tensor:
    """16-bit (or 8-bit) grayscale depth PNG -> float tensor (3, H, W) in 0..1.

    Decoded from the full 16 bits: going through an 8-bit PIL mode would band the
    depth into 256 levels and the ControlNet would draw contour lines. ``size``: the job's
    (width, height), which the decoder enforces (engine/images.py).
    """
    import torch

    with _bounded_map(png, size, "depth map") as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(img).astype(np.float32) / 65535.0
        else:
            array = np.asarray(img.convert("L")).astype(np.float32) / 255.0
    channel = torch.from_numpy(np.clip(array, 0.0, 1.0))
    return channel.unsqueeze(0).expand(3, -1, -1).contiguous()


def _bounded_map(png: bytes, size: tuple[int, int] | None, what: str) -> Any:
    from .. import images
    from ..api import limits

    if size is None:
        return images.decode(png, max_pixels=limits.MAX_SIDE * limits.MAX_SIDE, field="frames", what=what)
    return images.decode(png, size=size, max_pixels=size[0] * size[1], field="frames", what=what)


def decode_rgb(png: bytes, size: tuple[int, int] | None = None) -> torch.Tensor:
    """An OpenPose drawing (RGB PNG) -> float tensor (3, H, W) in 0..1; ``size`` as for decode_depth."""
    import torch

    with _bounded_map(png, size, "pose map") as img:
        array = np.asarray(img.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def decode_normal(png: bytes, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A normal map (RGB PNG, ControlNet 1.1 normalbae encoding, made by the add-on) -> float tensor
    (3, H, W) in 0..1, the bytes as the normal ControlNet was trained on them; ``size`` as for decode_depth."""
    import torch

    with _bounded_map(png, size, "normal map") as img:
        array = np.asarray(img.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def decode_lineart(png: bytes, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A line-art map (grey PNG, white lines on black, in any of the lineart/canny/MLSD forms) -> float
    tensor (3, H, W) in 0..1: the grey value in all three channels, as the line ControlNets read their
    RGB input. ``size`` as for decode_depth."""
    import torch

    with _bounded_map(png, size, "lineart map") as img:
        array = np.asarray(img.convert("L")).astype(np.float32) / 255.0
    return torch.from_numpy(array).unsqueeze(0).expand(3, -1, -1).contiguous()


# ADE20K has 150 classes (ids 0..149); 255 is "unlabeled" and is drawn black.
SEG_CLASSES = 150
SEG_UNLABELED = 255


@functools.lru_cache(maxsize=1)
def seg_lut() -> np.ndarray:
    """256 x 3 uint8: class index -> colour. Rows 0..149 are ``controlnet_aux.util.ade_palette()``, the
    palette the ControlNet 1.1 seg model was trained on, read from controlnet-aux rather than copied
    (one source for it); every other row is black (255, unlabeled; 150..254 are refused at submit)."""
    with warnings.catch_warnings():
        # controlnet_aux imports every annotator on first use, each with its deprecation warnings.
        warnings.simplefilter("ignore")
        from controlnet_aux.util import ade_palette

    palette = np.asarray(ade_palette(), dtype=np.uint8)
    if palette.shape != (SEG_CLASSES, 3):
        raise RuntimeError(f"controlnet_aux's ADE20K palette has shape {palette.shape}, not (150, 3)")
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:SEG_CLASSES] = palette
    return lut


def seg_colours(indices: np.ndarray) -> np.ndarray:
    """H x W class indices (uint8) -> H x W x 3 uint8 ADE20K colours (``seg_lut``)."""
    return seg_lut()[np.asarray(indices, dtype=np.uint8)]


def decode_seg(png: bytes, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A segmentation map (grey PNG of ADE20K class indices) -> float tensor (3, H, W) in 0..1 of its
    ADE20K colours: the add-on sends classes, the engine owns the palette. ``size`` as for decode_depth."""
    import torch

    with _bounded_map(png, size, "seg map") as img:
        if img.mode != "L":
            from ..contract.errors import BadRequest

            raise BadRequest(f"frames: the seg map is mode {img.mode}, not 8-bit grey class indices (mode L)",
                             field="frames", code="bad_map")
        colours = seg_colours(np.asarray(img))
    return torch.from_numpy(colours.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


# How each control map becomes the tensor its ControlNet takes (engine/jobs/context.py ``decode``).
DECODERS = {"depth": decode_depth, "pose": decode_rgb, "normal": decode_normal, "lineart": decode_lineart,
            "seg": decode_seg}

# The PIL mode each new map must have at submit (``check_map_image``); depth and pose keep their old checks.
MAP_MODES = {"normal": ("RGB",), "lineart": ("L",), "seg": ("L",)}


def check_map_image(source: Any, kind: str, size: tuple[int, int], field: str) -> None:
    """At submit: a control map of ``kind`` is a whole PNG of exactly ``size`` (engine/images.py), of the
    mode its kind needs, and a seg map holds only ADE20K classes (0..149) or 255; else 400 ``bad_map`` /
    ``map_size_mismatch`` naming ``field`` (``frames[i].<kind>``). Any thread."""
    from .. import images
    from ..contract.errors import BadRequest

    what = f"{kind} map"
    _, mode = images.check(source, size=size, max_pixels=size[0] * size[1], field=field, what=what)
    wanted = MAP_MODES.get(kind)
    if wanted is not None and mode not in wanted:
        form = "8-bit RGB" if wanted == ("RGB",) else "8-bit grey (mode L)"
        raise BadRequest(f"{field}: the {what} is mode {mode}, but a {kind} map is an {form} PNG "
                         f"(engine/API.md); render the shot's {kind} maps again", field=field, code="bad_map")
    if kind == "seg":
        with images.decode(source, size=size, max_pixels=size[0] * size[1], field=field, what=what) as img:
            _check_seg_classes(np.asarray(img), field)


def _check_seg_classes(indices: np.ndarray, field: str) -> None:
    """Every value an ADE20K class index (0..149) or 255 (unlabeled): 150..254 mean nothing."""
    from ..contract.errors import BadRequest

    bad = (indices >= SEG_CLASSES) & (indices != SEG_UNLABELED)
    if bad.any():
        y, x = (int(v) for v in np.argwhere(bad)[0])
        raise BadRequest(f"{field}: the seg map has class index {int(indices[y, x])} at pixel ({x}, {y}) "
                         f"({int(bad.sum())} such pixels); ADE20K classes are 0..149 and 255 is unlabeled",
                         field=field, code="bad_map")


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def read_rgb(png: bytes, *, max_pixels: int, size: tuple[int, int] | None = None, what: str = "image",
             field: str = "frames") -> np.ndarray:
    """PNG bytes -> H x W x 3 uint8 pixels, through the one bounded decoder (engine/images.py): at most
    ``max_pixels``, exactly ``size`` when given, a 4xx naming ``field`` and ``what`` otherwise."""
    from .. import images

    with images.decode(png, size=size, max_pixels=max_pixels, field=field, what=what) as img:
        return np.asarray(img.convert("RGB"))
