"""Cross-shot FLOW batching: four FLOW shots interleaved (frame t of every shot in one batch)
against the same four shots one after another, engine in-process.

1. Write random-weight models of a preset (``python -m engine make-tiny-models --preset``).
2. Upload each shot's control maps: a depth map with a near square moving over a far
   backdrop, and the exact backward flow, so most frames are carried (img2img).
3. Sequential: one engine, each shot submitted after the previous one finished.
   Interleaved: a second engine (its own cache), all shots queued before its worker
   starts, ``batch_size`` = shots. Model loading is left out of both times.
4. Print fps of each, the ratio, and whether every frame's cache key and bytes match.

CPU:  .venv-engine/bin/python benchmarks/bench_interleave.py
      .venv-engine/bin/python benchmarks/bench_interleave.py --preset mid --size 128
GPU:  .venv-engine/bin/python benchmarks/bench_interleave.py --preset sd15 --size 512 --device cuda

``run(preset, device, size, steps, frames, shots)`` returns the figures as a dict for other benchmarks.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _blob(array: np.ndarray, kind: str) -> tuple[str, bytes]:
    from PIL import Image

    buf = io.BytesIO()
    if kind == "npy":
        np.save(buf, array)
    else:
        Image.fromarray(array).save(buf, format="PNG")
    data = buf.getvalue()
    return hashlib.sha256(data).hexdigest(), data


def shot_frames(storage: Any, shot: int, frames: int, size: int) -> list[dict[str, Any]]:
    """Frame specs of one FLOW shot, its maps put in ``storage``: backdrop 1 px/frame, square 3 px/frame."""
    specs = []
    side = size // 4
    for n in range(frames):
        v = np.full((size, size), 0.2 + 0.05 * shot, np.float32)
        x0 = size // 8 + 3 * n + shot
        v[size // 3:size // 3 + side, x0:x0 + side] = 0.9
        depth_sha, depth = _blob((1 + np.rint(v * 65534)).astype(np.uint16), "png")
        flow = np.zeros((size, size, 2), np.float32)
        flow[..., 0] = -1.0
        flow[size // 3:size // 3 + side, x0:x0 + side, 0] = -3.0
        flow_sha, flow_data = _blob(flow, "npy")
        storage.put_blob(depth_sha, depth)
        storage.put_blob(flow_sha, flow_data)
        specs.append({"frame": n + 1, "depth": depth_sha, "pose": None, "flow": flow_sha if n else None})
    return specs


def shot_requests(storage: Any, models: dict[str, str], shots: int, frames: int, size: int, steps: int,
                  device: str) -> list[Any]:
    from engine.contract.schema import JobRequest

    prompts = ["a red car on a street", "a lighthouse at dusk", "a forest path", "a kitchen table"]
    return [JobRequest.model_validate({
        "shot": f"shot{i}", "prompt": prompts[i % len(prompts)], "negative_prompt": "blurry", "seed": 40 + i,
        "steps": steps, "guidance_scale": 5.0, "width": size, "height": size, "batch_size": shots, "device": device,
        "models": {"base": models["base"], "controlnet_depth": models["depth"], "controlnet_pose": None},
        "coherence": {"mode": "FLOW", "strength": 0.6},
        "frames": shot_frames(storage, i, frames, size),
    }) for i in range(shots)]


def _wait(jobs: list[Any], timeout: float = 3600.0) -> None:
    deadline = time.monotonic() + timeout
    while any(j.status not in ("done", "failed", "cancelled") for j in jobs):
        if time.monotonic() > deadline:
            raise TimeoutError("jobs did not finish")
        time.sleep(0.02)
    failed = [j.error for j in jobs if j.status != "done"]
    if failed:
        raise RuntimeError(f"jobs failed: {failed}")


def run_shots(data_dir: Path, models: dict[str, str], shots: int, frames: int, size: int, steps: int,
              device: str, interleave: bool) -> tuple[list[Any], float, Any]:
    """The shots on a fresh engine; returns (jobs, seconds without model loading, storage)."""
    from engine.jobs.manager import JobManager
    from engine.storage import Storage

    storage = Storage(data_dir)
    manager = JobManager(storage, default_device=device, max_pipelines=1)
    requests = shot_requests(storage, models, shots, frames, size, steps, device)
    if interleave:
        jobs = [manager.submit(r) for r in requests]  # all queued before the worker starts
        started = time.perf_counter()
        manager.start()
        _wait(jobs)
    else:
        manager.start()
        jobs, started = [], time.perf_counter()
        for request in requests:
            jobs.append(manager.submit(request))
            _wait(jobs[-1:])
    seconds = time.perf_counter() - started - sum(j.timings["load_s"] for j in jobs)
    manager.stop()
    return jobs, seconds, storage


def frame_bytes(jobs: list[Any], storage: Any) -> dict[str, bytes]:
    return {key: storage.frame_path(key).read_bytes() for job in jobs for key in job.frame_keys.values()}


def max_difference(a: dict[str, bytes], b: dict[str, bytes]) -> int:
    """Largest per-pixel difference (0..255) between frames of equal keys."""
    from PIL import Image

    worst = 0
    for key in a:
        x = np.asarray(Image.open(io.BytesIO(a[key])), dtype=np.int16)
        y = np.asarray(Image.open(io.BytesIO(b[key])), dtype=np.int16)
        worst = max(worst, int(np.abs(x - y).max()))
    return worst


def make_models(preset: str, out: Path) -> dict[str, str]:
    if not (out / "sd15" / "model_index.json").exists():
        make_tiny_models(out, preset, "--no-video")
    return model_paths(out, "base", "depth")


def run(preset: str = "tiny", device: str = "cpu", size: int = 64, steps: int = 8, frames: int = 8,
        shots: int = 4, models_dir: str | None = None) -> dict[str, Any]:
    """Both runs; fps, the ratio, and how far interleaved frames are from sequential ones."""
    with tempfile.TemporaryDirectory(prefix="vf-interleave-") as tmp:
        models = make_models(preset, Path(models_dir) if models_dir else Path(tmp) / "models")
        seq_jobs, seq_s, seq_storage = run_shots(Path(tmp) / "seq", models, shots, frames, size, steps, device,
                                                 interleave=False)
        int_jobs, int_s, int_storage = run_shots(Path(tmp) / "int", models, shots, frames, size, steps, device,
                                                 interleave=True)
        seq, inter = frame_bytes(seq_jobs, seq_storage), frame_bytes(int_jobs, int_storage)
        total = shots * frames
        return {
            "preset": preset, "device": int_jobs[0].key.device, "size": size, "steps": steps, "frames": frames,
            "shots": shots, "sequential_fps": round(total / seq_s, 3), "interleaved_fps": round(total / int_s, 3),
            "ratio": round(seq_s / int_s, 3), "same_keys": set(seq) == set(inter),
            "identical_frames": sum(seq[k] == inter.get(k) for k in seq), "total_frames": total,
            "max_pixel_difference": max_difference(seq, inter) if set(seq) == set(inter) else None,
            "shots_interleaved": max(j.detail.get("shots_interleaved", 1) for j in int_jobs),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "mid", "sd15"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=["auto", "cuda", "mps", "cpu"])
    parser.add_argument("--models-dir", default=None, help="reuse models written earlier (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    result = run(args.preset, args.device, args.size, args.steps, args.frames, args.shots, args.models_dir)
    print(f"{result['shots']} FLOW shots x {result['frames']} frames, {result['preset']} at {result['size']} px, "
          f"{result['steps']} steps on {result['device']}")
    print(f"  one after another: {result['sequential_fps']:.3f} fps")
    print(f"  interleaved:       {result['interleaved_fps']:.3f} fps ({result['ratio']:.2f}x)")
    print(f"  same cache keys: {result['same_keys']}; byte-identical frames: {result['identical_frames']}/"
          f"{result['total_frames']}; largest pixel difference: {result['max_pixel_difference']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
