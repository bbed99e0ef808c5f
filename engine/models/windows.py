"""Window planning for video models: pure functions, no torch (unit-tested in tests/unit).

A video model takes clips of ``4k + 1`` frames (Wan: the VAE packs 4 frames per latent
after the first) whose sides are multiples of 16 (8x VAE, 2x2 patches). A shot of any
length is cut into overlapping windows of at most ``window`` frames:

- windows start at frame offsets ``0, stride, 2*stride, ...`` with ``stride = window - overlap``;
  the last window is moved back so that it ends on the shot's last frame (a longer
  overlap, never padding), so padding only happens when the whole shot is shorter
  than one window;
- the first ``kept`` frames of a window are the previous window's last generated frames,
  given to the model as kept frames (mask 0); the window contributes only its frames after
  them, so every timeline frame gets exactly one generated frame;
- padding repeats the last frame's controls at the *end* of a clip, and the padded frames
  are dropped: timing never shifts, take frame i is timeline frame i.

Sizes: the generation size is rounded *up* to multiples of 16 (the control maps are
padded by repeating their edge) and the frames are cropped back to the requested size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

TEMPORAL_FACTOR = 4  # Wan VAE: 1 + 4k frames
SIZE_MULTIPLE = 16


def frames_up(count: int, factor: int = TEMPORAL_FACTOR) -> int:
    """The smallest ``factor * k + 1`` >= ``count`` (count >= 1)."""
    if count < 1:
        raise ValueError(f"a clip needs at least 1 frame, got {count}")
    return count if (count - 1) % factor == 0 else count + factor - (count - 1) % factor


def frames_down(count: int, factor: int = TEMPORAL_FACTOR) -> int:
    """The largest ``factor * k + 1`` <= ``count`` (count >= 1)."""
    if count < 1:
        raise ValueError(f"a clip needs at least 1 frame, got {count}")
    return count - (count - 1) % factor


@dataclass(frozen=True)
class Window:
    """One model call: shot frames ``[start, stop)``, the first ``kept`` given, ``pad`` repeated at the end."""

    index: int
    start: int
    stop: int
    kept: int
    pad: int

    @property
    def length(self) -> int:
        """Frames the model sees: a valid clip length (``4k + 1``)."""
        return self.stop - self.start + self.pad

    @property
    def new_start(self) -> int:
        """First shot frame index this window contributes (after its kept frames)."""
        return self.start + self.kept


@dataclass(frozen=True)
class WindowPlan:
    windows: tuple[Window, ...]
    window: int
    overlap: int
    messages: tuple[str, ...]


def plan_windows(num_frames: int, window: int, overlap: int, min_frames: int = 5,
                 factor: int = TEMPORAL_FACTOR) -> WindowPlan:
    """Cut ``num_frames`` shot frames into model windows; see the module docstring.

    ``window`` and ``overlap`` are rounded to what the model takes (``window`` down to
    ``4k + 1``, at least ``min_frames``; ``overlap`` clamped to [1, window - 1]), and every
    adjustment is returned as a message naming the new value.
    """
    if num_frames < 1:
        raise ValueError(f"a shot needs at least 1 frame, got {num_frames}")
    messages: list[str] = []
    # 1. Window length: a valid clip length, at least the model's minimum.
    fixed = max(frames_up(min_frames, factor), frames_down(max(window, 1), factor))
    if fixed != window:
        messages.append(f"video.window {window} is not a {factor}k+1 frame count the model takes: using {fixed}")
    window = fixed
    # 2. Overlap: at least one kept frame links windows, at most window - 1 (progress).
    fixed_overlap = min(max(overlap, 1), window - 1)
    if fixed_overlap != overlap:
        messages.append(f"video.overlap {overlap} must be between 1 and window - 1 = {window - 1}: using "
                        f"{fixed_overlap}")
    overlap = fixed_overlap
    # 3. A shot that fits in one window: one clip, padded at the end to 4k + 1 (and the minimum).
    if num_frames <= window:
        length = max(frames_up(num_frames, factor), frames_up(min_frames, factor))
        pad = length - num_frames
        if pad and num_frames < min_frames:
            messages.append(f"the shot has {num_frames} frames, fewer than the model's minimum of {min_frames}: "
                            f"padded to {length} by repeating the last frame's controls; the padding is dropped")
        elif pad:
            messages.append(f"{num_frames} frames is not a {factor}k+1 clip: padded to {length} at the end "
                            "(padding dropped, timing unchanged)")
        return WindowPlan((Window(0, 0, num_frames, 0, pad),), window, overlap, tuple(messages))
    # 4. Longer shots: windows every ``stride`` frames; the last one ends on the last frame.
    stride = window - overlap
    windows: list[Window] = []
    start, covered = 0, 0
    while covered < num_frames:
        start = min(start, num_frames - window)
        kept = covered - start
        windows.append(Window(len(windows), start, start + window, kept, 0))
        covered = start + window
        start += stride
    return WindowPlan(tuple(windows), window, overlap, tuple(messages))


@dataclass(frozen=True)
class SizePlan:
    """Generate at ``width`` x ``height`` (multiples of 16), crop ``crop`` = (left, top, right, bottom) back."""

    width: int
    height: int
    crop: tuple[int, int, int, int]
    message: str | None


def plan_size(width: int, height: int, multiple: int = SIZE_MULTIPLE) -> SizePlan:
    """Round a frame size up to ``multiple``; the extra is split around the picture and cropped off."""
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    gen_w = -(-width // multiple) * multiple
    gen_h = -(-height // multiple) * multiple
    left, top = (gen_w - width) // 2, (gen_h - height) // 2
    message = None
    if (gen_w, gen_h) != (width, height):
        message = (f"{width}x{height} is not a multiple of {multiple} on both sides, which the video model needs: "
                   f"generating at {gen_w}x{gen_h} and cropping back to {width}x{height}")
    return SizePlan(gen_w, gen_h, (left, top, left + width, top + height), message)


def seam_frames(plan: WindowPlan) -> list[int]:
    """Shot frame indices that start a window's new frames after a seam (window k+1's first new frame)."""
    return [w.new_start for w in plan.windows[1:]]
