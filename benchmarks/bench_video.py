"""VIDEO (Wan VACE) beside IMAGE FLOW on the demo film: take metrics, seams, memory; and GPU throughput.

    .venv-engine/bin/python benchmarks/bench_video.py [--long-edge 192] [--steps 4] [--window 17] [--overlap 4]
    .venv-engine/bin/python benchmarks/bench_video.py --throughput --device cuda [--frames 81] [--size 832x480]

Metrics mode:
1. Control maps of the demo film (Dolly, Pan, Orbit; 24 frames each), rendered in headless
   Blender by ``bench_coherence.py`` and shared with it (``benchmarks/out/coherence``).
2. One job per shot and variant through the engine's own ``JobManager`` (the code an HTTP job
   runs), same prompt and seed: IMAGE FLOW (the default method), and VIDEO with each control
   video (DEPTH, POSE, DEPTH_POSE). Windows of ``--window`` frames so the 24-frame shots have seams.
3. ``engine.metrics.take.measure_take`` on each take (what ``python -m engine metrics`` prints), plus
   the warp error of seam frames (a window's first new frame) against frames inside windows.
With tiny random-weight models (the default) this shows the plumbing, not quality.

Throughput mode (needs a GPU): writes the ``wan-1.3b`` preset (the Wan2.1-VACE-1.3B transformer and
Wan VAE at full size, random weights) and times one window of ``--frames`` frames at ``--size``
after a warm-up window; prints frames per second and peak GPU memory for one and for three windows
(memory must stay flat with shot length).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, make_tiny_models  # noqa: E402

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
PROMPT_STYLE = "cinematic still, overcast light, muted colours, 35mm film grain"


def shot_frames(storage: object, cond: Path, meta: dict) -> list[dict]:
    frames = []
    for n in meta["frames"]:
        entry: dict = {"frame": n}
        for kind, path in (("depth", cond / "depth" / f"{n:04d}.png"), ("pose", cond / "pose" / f"{n:04d}.png"),
                           ("flow", cond / "flow" / f"{n:04d}.npy")):
            if (kind == "pose" and not (meta.get("pose_frames") or {}).get(str(n))) or not path.is_file():
                entry[kind] = None
                continue
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            storage.put_blob(sha, data)  # type: ignore[attr-defined]
            entry[kind] = sha
        frames.append(entry)
    return frames


def run_job(manager: object, request: object) -> object:
    job = manager.submit(request)  # type: ignore[attr-defined]
    while job.status not in ("done", "failed", "cancelled"):
        time.sleep(0.05)
    if job.status != "done":
        raise SystemExit(f"job {job.status}: {job.error}")
    return job


def metrics_mode(args: argparse.Namespace) -> int:
    import numpy as np
    from bench_coherence import PROMPTS, maps_source

    from engine.contract.schema import JobRequest
    from engine.jobs.manager import JobManager
    from engine.metrics.take import measure_take
    from engine.models.windows import plan_windows
    from engine.storage import Storage

    out = Path(args.out)
    maps = out.parent / "coherence"
    # 1. Maps (shared with bench_coherence.py) and models.
    if not (maps / "shots.json").is_file() or \
            json.loads((maps / "shots.json").read_text()).get("source") != maps_source(args.long_edge):
        maps.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "benchmarks" / "bench_coherence.py"),
                        "--render-maps", "--out", str(maps), "--long-edge", str(args.long_edge)], check=True, cwd=ROOT)
    models = Path(args.models) if args.models else out / "tiny-models"
    if not (models / "wan-vace").is_dir():
        make_tiny_models(models)
    info = json.loads((maps / "shots.json").read_text())
    storage = Storage(out / "engine-data")
    manager = JobManager(storage, default_device=args.device, max_pipelines=2)
    manager.start()
    variants = {
        "IMAGE FLOW": {"coherence": {"mode": "FLOW", "strength": 0.55}},
        **{f"VIDEO {c}": {"generator": "VIDEO", "video": {"model": str(models / "wan-vace"), "control": c,
                                                            "window": args.window, "overlap": args.overlap}}
           for c in ("DEPTH", "POSE", "DEPTH_POSE")},
    }
    rows = []
    try:
        # 2. Generate every variant on every shot, same seed.
        for name, extra in variants.items():
            for shot in info["shots"]:
                cond = maps / shot["name"] / "conditioning"
                meta = json.loads((cond / "meta.json").read_text())
                body = {
                    "shot": shot["name"], "prompt": PROMPTS.get(shot["name"], ""), "style_prompt": PROMPT_STYLE,
                    "negative_prompt": "blurry, deformed, text, watermark", "seed": 1234, "steps": args.steps,
                    "guidance_scale": 5.0, "width": info["width"], "height": info["height"], "batch_size": 4,
                    "device": args.device, "frames": shot_frames(storage, cond, meta),
                    "models": {"base": str(models / "sd15"), "controlnet_depth": str(models / "controlnet-depth"),
                               "controlnet_pose": str(models / "controlnet-pose")}, **extra,
                }
                body.setdefault("coherence", {"mode": "INDEPENDENT"})
                body["coherence"] = {**body["coherence"], "depth_range": [meta["near"], meta["far"]]}
                started = time.perf_counter()
                job = run_job(manager, JobRequest.model_validate(body))
                seconds = time.perf_counter() - started
                take = out / "takes" / name.replace(" ", "_") / shot["name"]
                take_dir = take / "takes" / "001"
                shutil.rmtree(take_dir, ignore_errors=True)
                take_dir.mkdir(parents=True)
                if not (take / "conditioning").exists():
                    (take / "conditioning").symlink_to(cond)
                for n, key in job.done.items():
                    shutil.copyfile(storage.frame_path(key), take_dir / f"{n:04d}.png")
                (take_dir / "take.json").write_text(json.dumps({"shot": shot["name"], "take": "001",
                                                                "settings": {k: v for k, v in body.items()
                                                                             if k in ("coherence", "generator", "video")}}))
                # 3. Metrics, and seams against inside-window frames (VIDEO only).
                metrics = measure_take(take_dir)
                seam = inside = float("nan")
                if "generator" in extra:
                    plan = plan_windows(len(meta["frames"]), args.window, args.overlap)
                    seam_frames = {meta["frames"][w.new_start] for w in plan.windows[1:]}
                    pairs = [f for f in sorted(job.done)[1:]]
                    by_frame = dict(zip(pairs, metrics.warp_errors, strict=False)) \
                        if len(metrics.warp_errors) == len(pairs) else {}
                    seam = float(np.mean([e for f, e in by_frame.items() if f in seam_frames] or [np.nan]))
                    inside = float(np.mean([e for f, e in by_frame.items() if f not in seam_frames] or [np.nan]))
                rows.append({"variant": name, "shot": shot["name"], "frames": metrics.frames,
                             "warp_error": metrics.warp_error, "depth_edge_corr": metrics.depth_edge_corr,
                             "seam": seam, "inside": inside, "seconds": seconds})
                print(f"[bench] {name:17s} {shot['name']:6s} warp_error {metrics.warp_error:6.2f} depth_edge_corr "
                      f"{metrics.depth_edge_corr:.3f} seam {seam:6.2f} inside {inside:6.2f} {seconds:.1f} s "
                      f"maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB", flush=True)
    finally:
        manager.stop()
    lines = [f"Settings: demo film, {info['width']}x{info['height']}, {args.steps} steps, seed 1234, "
             f"{'tiny random-weight models' if not args.models else args.models}, {args.device}, "
             f"VIDEO window {args.window} overlap {args.overlap}", "",
             "| variant | shot | frames | warp error | depth-edge corr | seam warp error | inside-window warp error |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['shot']} | {r['frames']} | {r['warp_error']:.2f} | "
                     f"{r['depth_edge_corr']:.3f} | {r['seam']:.2f} | {r['inside']:.2f} |")
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    return 0


def throughput_mode(args: argparse.Namespace) -> int:
    import io

    import numpy as np
    import torch
    from PIL import Image

    from engine.contract.schema import JobRequest
    from engine.jobs.manager import JobManager
    from engine.storage import Storage

    out = Path(args.out)
    models = out / "wan-1.3b-models"
    if not (models / "wan-vace-wan-1.3b").is_dir():
        make_tiny_models(models, "tiny", "--no-video", "--wan-preset", "wan-1.3b")
    width, height = (int(v) for v in args.size.split("x"))
    storage = Storage(out / "engine-data-throughput")
    manager = JobManager(storage, default_device=args.device, max_pipelines=1)
    manager.start()

    def frames(count: int, seed: int) -> list[dict]:
        rng = np.random.default_rng(seed)
        result = []
        for n in range(1, count + 1):
            buf = io.BytesIO()
            Image.fromarray((rng.random((height, width)) * 65535).astype(np.uint16)).save(buf, format="PNG")
            sha = hashlib.sha256(buf.getvalue()).hexdigest()
            storage.put_blob(sha, buf.getvalue())
            result.append({"frame": n, "depth": sha})
        return result

    def run(count: int, seed: int) -> tuple[float, float, int]:
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        job = run_job(manager, JobRequest.model_validate({
            "shot": "throughput", "prompt": "a street", "seed": seed, "steps": args.steps, "guidance_scale": 5.0,
            "width": width, "height": height, "device": args.device, "generator": "VIDEO",
            "cpu_offload": args.offload, "frames": frames(count, seed),
            "video": {"model": str(models / "wan-vace-wan-1.3b"), "window": args.frames, "overlap": 8},
        }))
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
        return job.timings["model_s"], peak, job.detail.get("windows", 1)

    try:
        run(args.frames, 1)  # warm-up: load, kernels
        model_s, peak1, _ = run(args.frames, 2)
        print(f"[bench] Wan VACE 1.3B (random weights) {width}x{height}, {args.frames} frames, {args.steps} steps: "
              f"{model_s:.1f} s -> {args.frames / model_s:.3f} frames/s, peak {peak1:.1f} GiB", flush=True)
        long_frames = args.frames * 3 - 16
        model_s3, peak3, windows = run(long_frames, 3)
        print(f"[bench] {long_frames} frames in {windows} windows: {long_frames / model_s3:.3f} frames/s, "
              f"peak {peak3:.1f} GiB (one window: {peak1:.1f} GiB)", flush=True)
    finally:
        manager.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "video"))
    parser.add_argument("--long-edge", type=int, default=192)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--window", type=int, default=17)
    parser.add_argument("--overlap", type=int, default=4)
    parser.add_argument("--models", default=None, help="folder with sd15, controlnet-*, wan-vace")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps", "auto"])
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--offload", action="store_true")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return throughput_mode(args) if args.throughput else metrics_mode(args)


if __name__ == "__main__":
    sys.exit(main())
