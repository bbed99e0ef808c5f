"""Finalize Take: upscale seconds per frame at 2x and 4x, model vs plain resizing, and a whole finalize job.

    .venv-engine/bin/python benchmarks/bench_finals.py [--size 192x112] [--frames 8] [--device cpu|cuda]
        [--preset tiny|full] [--steps 4] [--detail 0.3]

1. Upscale only (``engine.models.upscale.enlarge``): each upscaler on ``--frames`` frames of
   ``--size``: Lanczos resizing, the Real-ESRGAN-class x2 and x4 files ``make-tiny-models``
   writes (``--preset tiny``: Compact with 8 features; ``--preset full``: Compact x2 64/32
   and RRDBNet x4 64/23, the sizes of the published Real-ESRGAN models, random weights).
   Also the high-frequency energy of the result relative to Lanczos (``hf_energy``), to show
   the model is not just resizing.
2. A whole finalize job (engine ``JobManager`` in this process, tiny diffusion models): the
   analytic pan's maps at 2x and 4x, upscale + FLOW-guided detail pass, seconds per frame.
Prints a Markdown table; docs/benchmarks.md records it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, make_tiny_models  # noqa: E402

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def frames_of(width: int, height: int, count: int):
    """Deterministic textured frames (a smooth pattern plus grain), ``count`` of them."""
    import numpy as np

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for n in range(count):
        base = 128 + 70 * np.sin((x + 2 * n) / 6.0) * np.cos(y / 9.0)
        grain = rng.normal(0, 12, (height, width, 3))
        out.append(np.clip(base[..., None] + grain, 0, 255).astype(np.uint8))
    return out


def bench_upscale(width: int, height: int, count: int, device: str, preset: str, models: Path) -> list[dict]:
    from engine.metrics.take import hf_energy
    from engine.models.upscale import enlarge, load_upscaler
    from engine.testing.upscalers import write_upscalers

    paths = write_upscalers(models / f"upscalers-{preset}", preset=preset)
    frames = frames_of(width, height, count)
    rows = []
    for factor in (2, 4):
        target = (width * factor, height * factor)
        reference = None
        for label, path in (("Lanczos resize", None), (f"model x{factor}", paths[f"upscaler_x{factor}"])):
            model = load_upscaler(path, device) if path else None
            enlarge(frames[0], *target, model)  # warm-up (first call allocates)
            started = time.perf_counter()
            results = [enlarge(f, *target, model) for f in frames]
            if device == "cuda":
                import torch

                torch.cuda.synchronize()
            seconds = (time.perf_counter() - started) / count
            energy = sum(hf_energy(r) for r in results) / count
            reference = reference or energy
            rows.append({"what": f"{factor}x {label}" + (f" ({model.name})" if model else ""),
                         "size": f"{width}x{height} -> {target[0]}x{target[1]}", "s_per_frame": seconds,
                         "hf_vs_resize": energy / reference})
            print(f"[bench] {rows[-1]['what']:45s} {rows[-1]['size']:22s} {seconds:8.4f} s/frame  "
                  f"HF energy {energy / reference:.2f}x resize", flush=True)
    return rows


def bench_finalize(models: Path, count: int, steps: int, detail: float, device: str, out: Path) -> list[dict]:
    import analytic_pan as pan

    from engine.contract.schema import JobRequest
    from engine.jobs.manager import JobManager
    from engine.storage import Storage

    storage = Storage(out / "engine-data")
    manager = JobManager(storage, default_device=device, max_pipelines=1)
    manager.start()
    rows = []

    def blob(data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        storage.put_blob(sha, data)
        return sha

    try:
        sources = [blob(pan.png_bytes(f)) for f in frames_of(pan.WIDTH, pan.HEIGHT, count)]
        for factor in (2, 4):
            width, height = pan.WIDTH * factor, pan.HEIGHT * factor
            depth = blob(pan.png_bytes(pan.depth_map(width, height)))
            flow = blob(pan.npy_bytes(pan.flow_map(width, height, pan.SPEED * factor)))
            for upscaler in (None, str(models / "upscaler-x2.safetensors" if factor == 2 else
                                       models / "upscaler-x4.safetensors")):
                request = JobRequest.model_validate({
                    "shot": "Pan", "prompt": "a brick wall", "seed": 7, "steps": steps, "width": width,
                    "height": height, "device": device,
                    "models": {"base": str(models / "sd15"), "controlnet_depth": str(models / "controlnet-depth"),
                               "controlnet_pose": None},
                    "frames": [{"frame": n + 1, "depth": depth, "flow": flow, "source": s}
                               for n, s in enumerate(sources)],
                    "coherence": {"mode": "FLOW", "strength": 0.5},
                    "finalize": {"upscaler": upscaler, "detail_strength": detail},
                })
                job = manager.submit(request)
                while job.status not in ("done", "failed", "cancelled"):
                    time.sleep(0.05)
                if job.status != "done":
                    raise SystemExit(f"finalize {factor}x: {job.status}: {job.error}")
                # Run time only: the first job also loads the diffusion models (``load_s``).
                seconds = job.timings["run_s"] / count
                label = f"{factor}x finalize job ({'model' if upscaler else 'Lanczos'} + detail {detail})"
                rows.append({"what": label, "size": f"{pan.WIDTH}x{pan.HEIGHT} -> {width}x{height}",
                             "s_per_frame": seconds, "hf_vs_resize": float("nan"),
                             "cached": len(job.cached)})
                print(f"[bench] {label:45s} {rows[-1]['size']:22s} {seconds:8.4f} s/frame "
                      f"(upscale {job.timings.get('upscale_s', 0) / count:.4f}, model {job.timings['model_s'] / count:.3f}; "
                      f"{len(job.cached)} frames from cache)", flush=True)
    finally:
        manager.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "finals"))
    parser.add_argument("--size", default="192x112", help="source frame size (the demo's generation size)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "full"], help="upscaler sizes")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--detail", type=float, default=0.3)
    parser.add_argument("--skip-job", action="store_true", help="upscale timings only")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = out / "tiny-models"
    if not (models / "sd15").is_dir():
        make_tiny_models(models)
    width, height = (int(v) for v in args.size.split("x"))
    rows = bench_upscale(width, height, args.frames, args.device, args.preset, out)
    if not args.skip_job:
        rows += bench_finalize(models, args.frames, args.steps, args.detail, args.device, out)
    lines = [f"Settings: {args.frames} frames, {args.device}, upscalers {args.preset} random weights, "
             f"diffusion: tiny random-weight models, {args.steps} steps", "",
             "| what | size | seconds per frame | HF energy vs Lanczos |", "|---|---|---:|---:|"]
    for r in rows:
        hf = f"{r['hf_vs_resize']:.2f}x" if r["hf_vs_resize"] == r["hf_vs_resize"] else ""
        lines.append(f"| {r['what']} | {r['size']} | {r['s_per_frame']:.4f} | {hf} |")
    print("\n".join(lines))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
