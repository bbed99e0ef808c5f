"""Take metrics: temporal stability along the exact flow, and fidelity to the depth map.

- **warp error**: for each pair of consecutive frames, frame N-1 warped into frame N along
  the shot's backward flow, mean absolute difference with frame N (RGB, 0..255) over the
  pixels the warp carries (``engine.coherence.flow.flow_masks``: not disoccluded, not out of frame,
  not background), averaged over the pairs of the take. Pairs across a cut (fewer than
  ``CUT_CARRIED_FRACTION`` of the pixels carried) or without flow are skipped and counted.
  A static shot that does not flicker scores 0; per-frame noise scores high.
- **depth-edge correlation**: Pearson correlation between the gradient magnitude of the
  depth map and that of the frame's luminance, both box-blurred over 5 x 5 pixels.
  Why this proxy: a frame that follows its depth map puts its object boundaries (luminance
  edges) where the depth jumps; it needs no depth estimator (none can be downloaded in
  every setting), is cheap, and drops when frames drift away from the maps (e.g. when
  FLOW carries stale content past moved geometry). Blurring first keeps fine texture, which
  the depth map does not predict, from dominating. 1 is perfect, 0 unrelated.
- **sharpness kept**: high-frequency energy (mean squared 5-point Laplacian of the luminance,
  0..255, over the interior pixels) of the take's last quarter of frames, divided by the mean
  of its keyframes' (frames generated from noise: every frame of an INDEPENDENT take; for
  FLOW the frames listed under ``keyframes`` in take.json, else the first frame). Warp error
  rewards blur; this figure catches it: 1.0 kept every bit of detail, 0.5 lost half the
  high-frequency energy. A horizontal [1, 2, 1]/4 blur of a sinusoid with a 4-pixel period
  scores exactly 0.25 (tests/engine/test_sharpness.py).

Numpy + PIL; runs in the engine's environment: ``python -m engine metrics TAKE_DIR``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..coherence.flow import depth_offset, flow_masks, inverse_depth, resize_nearest, warp

logger = logging.getLogger(__name__)

# Below this share of carried pixels, frame N-1 does not explain frame N: a camera cut.
CUT_CARRIED_FRACTION = 0.5


def warp_error(prev: np.ndarray, cur: np.ndarray, flow: np.ndarray, depth_prev: np.ndarray,
               depth_cur: np.ndarray, offset: float = 0.0) -> tuple[float, float]:
    """(mean |warp(prev) - cur| over carried pixels in 0..255, carried fraction); ``offset``: flow.depth_offset."""
    masks = flow_masks(depth_prev, depth_cur, flow, offset=offset)
    warped, _ = warp(prev.astype(np.float32), flow)
    carried = masks.carried_fraction()
    if not masks.valid.any():
        return float("nan"), carried
    diff = np.abs(warped - cur.astype(np.float32))[masks.valid]
    return float(diff.mean()), carried


def _box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(image, radius, mode="edge")
    csum = np.cumsum(np.cumsum(padded, axis=0), axis=1)
    csum = np.pad(csum, ((1, 0), (1, 0)))
    k = 2 * radius + 1
    height, width = image.shape
    total = (csum[k:k + height, k:k + width] - csum[:height, k:k + width]
             - csum[k:k + height, :width] + csum[:height, :width])
    return total / (k * k)


def _gradient_magnitude(image: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(image)
    return np.hypot(gx, gy)


def depth_edge_correlation(frame: np.ndarray, depth: np.ndarray, radius: int = 2) -> float:
    """Pearson correlation of blurred depth-edge and luminance-edge strength (see module doc)."""
    v, _ = inverse_depth(depth)
    height, width = frame.shape[:2]
    v = resize_nearest(v, height, width)
    rgb = frame.astype(np.float32) / 255.0
    luminance = 0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2]
    a = _gradient_magnitude(_box_blur(v.astype(np.float64), radius)).ravel()
    b = _gradient_magnitude(_box_blur(luminance.astype(np.float64), radius)).ravel()
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def hf_energy(frame: np.ndarray) -> float:
    """Mean squared 5-point Laplacian of the luminance (0..255) over interior pixels: detail, not content."""
    image = frame.astype(np.float64)
    if image.ndim == 3:
        image = 0.2126 * image[..., 0] + 0.7152 * image[..., 1] + 0.0722 * image[..., 2]
    lap = (image[1:-1, :-2] + image[1:-1, 2:] + image[:-2, 1:-1] + image[2:, 1:-1] - 4.0 * image[1:-1, 1:-1])
    return float(np.mean(lap * lap)) if lap.size else 0.0


def sharpness_kept(energies: list[float], keyframes: list[int]) -> float:
    """Mean ``hf_energy`` of the last quarter of ``energies`` over the mean of those at indices ``keyframes``."""
    if not energies or not keyframes:
        return float("nan")
    reference = float(np.mean([energies[i] for i in keyframes]))
    tail = energies[len(energies) - max(1, len(energies) // 4):]
    return float(np.mean(tail)) / reference if reference > 0 else float("nan")


@dataclass
class TakeMetrics:
    take: str
    frames: int = 0
    pairs: int = 0
    skipped_pairs: int = 0
    warp_errors: list[float] = field(default_factory=list)
    carried: list[float] = field(default_factory=list)
    correlations: list[float] = field(default_factory=list)
    hf_energies: list[float] = field(default_factory=list)
    keyframes: list[int] = field(default_factory=list)  # indices into hf_energies

    @property
    def sharpness_kept(self) -> float:
        return sharpness_kept(self.hf_energies, self.keyframes)

    @property
    def warp_error(self) -> float:
        return float(np.mean(self.warp_errors)) if self.warp_errors else float("nan")

    @property
    def depth_edge_corr(self) -> float:
        return float(np.mean(self.correlations)) if self.correlations else float("nan")

    def line(self) -> str:
        carried = float(np.mean(self.carried)) if self.carried else float("nan")
        return (f"{self.take}: frames {self.frames}, warp_error {self.warp_error:.2f} /255 over {self.pairs} pairs "
                f"({carried:.0%} of pixels carried, {self.skipped_pairs} pairs skipped: cut or no flow), "
                f"depth_edge_corr {self.depth_edge_corr:.3f}, sharpness_kept {self.sharpness_kept:.2f} "
                f"(last quarter vs {len(self.keyframes)} keyframes)")


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _read_depth(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img)
    return array.astype(np.uint16) if array.dtype != np.uint16 else array


def frame_numbers(take_dir: Path) -> list[int]:
    return sorted(int(p.stem) for p in take_dir.glob("[0-9]*.png") if p.stem.isdigit())


def measure_take(take_dir: Path, conditioning_dir: Path | None = None) -> TakeMetrics:
    """Both metrics for one take folder (``<shot>/takes/NNN``); maps from ``<shot>/conditioning``.

    Reads two frames at a time: memory does not depend on the take's length.
    """
    take_dir = Path(take_dir)
    cond = Path(conditioning_dir) if conditioning_dir else take_dir.parent.parent / "conditioning"
    if not (cond / "depth").is_dir():
        raise ValueError(f"{take_dir}: no control maps at {cond}; pass --conditioning <shot>/conditioning")
    frames = frame_numbers(take_dir)
    offset = 0.0
    if (cond / "meta.json").is_file():
        meta = json.loads((cond / "meta.json").read_text("utf-8"))
        offset = depth_offset(meta.get("near"), meta.get("far"))
    metrics = TakeMetrics(take=str(take_dir), frames=len(frames))
    keyframe_numbers = take_keyframes(take_dir, frames)
    previous: tuple[int, np.ndarray, np.ndarray] | None = None
    for number in frames:
        image = _read_rgb(take_dir / f"{number:04d}.png")
        if number in keyframe_numbers:
            metrics.keyframes.append(len(metrics.hf_energies))
        metrics.hf_energies.append(hf_energy(image))
        depth_path = cond / "depth" / f"{number:04d}.png"
        if not depth_path.is_file():
            previous = None
            metrics.skipped_pairs += 1
            continue
        depth = _read_depth(depth_path)
        metrics.correlations.append(depth_edge_correlation(image, depth))
        flow_path = cond / "flow" / f"{number:04d}.npy"
        if previous is not None:
            prev_number, prev_image, prev_depth = previous
            if prev_number != number - 1 or not flow_path.is_file():
                metrics.skipped_pairs += 1
            else:
                error, carried = warp_error(prev_image, image, np.load(flow_path), prev_depth, depth, offset)
                if carried < CUT_CARRIED_FRACTION or not np.isfinite(error):
                    metrics.skipped_pairs += 1
                else:
                    metrics.pairs += 1
                    metrics.warp_errors.append(error)
                    metrics.carried.append(carried)
        previous = (number, image, depth)
    return metrics


def take_keyframes(take_dir: Path, frames: list[int]) -> set[int]:
    """Frame numbers generated from noise: all of an INDEPENDENT take; FLOW: take.json ``keyframes``, else the first."""
    info: dict = {}
    if (take_dir / "take.json").is_file():
        try:
            info = json.loads((take_dir / "take.json").read_text("utf-8"))
        except ValueError:
            info = {}
    mode = ((info.get("settings") or {}).get("coherence") or {}).get("mode", "INDEPENDENT")
    if mode != "FLOW":
        return set(frames)
    listed = {int(n) for n in info.get("keyframes") or [] if int(n) in frames}
    return listed or set(frames[:1])


def find_takes(paths: list[Path]) -> list[Path]:
    """Take folders under each path: a take folder itself, a shot, or a whole viewfinder/ folder."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if (path / "take.json").is_file() or (path.is_dir() and frame_numbers(path) and
                                               (path.parent.parent / "conditioning").is_dir()):
            found.append(path)
        else:
            found.extend(sorted(p.parent for p in path.glob("**/takes/*/take.json")))
    return found


def take_label(take_dir: Path) -> str:
    info_path = take_dir / "take.json"
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text("utf-8"))
            settings = info.get("settings") or {}
            mode = settings.get("coherence", {}).get("mode", "?")
            if settings.get("generator") == "VIDEO":
                mode = f"VIDEO {(settings.get('video') or {}).get('pipeline', 'WAN_VACE')}"
            # Tiers (docs/user-guide.md "Drafts"): draft, final (not printed: the usual), finalized (Finalize Take;
            # take.json files from before generation tiers say "final" for it and keep settings.finalize).
            tier = info.get("tier") or "final"
            if tier == "final" and ("finalize" in settings or "source_take" in settings):
                tier = "finalized"
            tier = "" if tier == "final" else f", {tier}"
            return (f"{info.get('shot', take_dir.parent.parent.name)} take {info.get('take', take_dir.name)} "
                    f"[{mode}{tier}]")
        except (ValueError, AttributeError):
            pass
    return str(take_dir)
