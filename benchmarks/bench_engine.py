"""Engine benchmark: each frame's time split into model time and engine overhead.

Protocol
1. Write random-weight models of a preset (``python -m engine make-tiny-models --preset``).
2. Start a real engine process through the add-on's ``core/client/process.py``.
3. Warm-up job (loads the pipeline, fills caches), not measured.
4. Measured job: ``--frames`` frames with distinct depth + pose maps and a fresh seed (no
   cache hits), polled every 20 ms, every frame fetched as PNG over HTTP.
5. Baseline: the same frames, same batches, through a bare diffusers ControlNet
   pipeline in this process (no engine), after its own warm-up.
Figures, per frame: ``model`` = time inside the pipeline calls, measured by the engine;
``overhead`` = end-to-end time (submit to last frame fetched over HTTP) minus model
time: HTTP, queue, map decoding, PNG encoding, disk and polling. ``bare_diffusers`` = the
same frames through plain diffusers, to check the engine's calls cost no more.
Target: overhead < 10% of model time for the ``mid`` preset on a CPU.

CPU:  .venv-engine/bin/python benchmarks/bench_engine.py --preset mid --size 128
GPU:  .venv-engine/bin/python benchmarks/bench_engine.py --preset sd15 --size 512 --device cuda \
          --steps 20 --frames 16 --batch-size 4     (full-size SD 1.5 UNet + 2 ControlNets, fp16)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, depth_map, load_core, make_tiny_models, model_paths, png, pose_map, run_job  # noqa: E402

logger = logging.getLogger("bench_engine")


def run_engine(args: argparse.Namespace, models: dict[str, str], data_dir: Path) -> dict[str, Any]:
    client_mod, process_mod = load_core()
    engine = process_mod.LocalEngine(sys.executable, extension_dir=ROOT, data_dir=str(data_dir),
                                     log_path=data_dir / "engine.log", device=args.device,
                                     env={"HF_HUB_OFFLINE": "1"})
    started = time.perf_counter()
    client = engine.start()
    startup_s = time.perf_counter() - started
    try:
        shas = [(client.upload_blob(png(depth_map(i, args.frames, args.size))),
                 client.upload_blob(png(pose_map(i, args.size)))) for i in range(args.frames)]

        def job(seed: int, n: int) -> dict[str, Any]:
            return {"shot": "bench", "prompt": "a car chase at night", "negative_prompt": "blurry", "seed": seed,
                    "steps": args.steps, "guidance_scale": 7.5, "width": args.size, "height": args.size,
                    "batch_size": args.batch_size, "device": args.device,
                    "models": {"base": models["base"], "controlnet_depth": models["depth"],
                               "controlnet_pose": models["pose"]},
                    "frames": [{"frame": i, "depth": d, "pose": p} for i, (d, p) in enumerate(shas[:n])]}

        warm, warm_s = run_job(client, job(1, min(args.batch_size, args.frames)), data_dir / "warm")
        status, wall_s = run_job(client, job(2, args.frames), data_dir / "out")
        return {"startup_s": startup_s, "first_job_s": warm_s, "first_load_s": warm["timings"]["load_s"],
                "wall_s": wall_s, "engine_model_s": status["timings"]["model_s"],
                "engine_run_s": status["timings"]["run_s"], "device": client.health()["device"]}
    finally:
        engine.stop()


def run_baseline(args: argparse.Namespace, models: dict[str, str], device: str) -> float:
    """Seconds for the same frames through bare diffusers, no engine."""
    import torch
    from diffusers import (
        ControlNetModel,
        MultiControlNetModel,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
        UniPCMultistepScheduler,
    )

    dtype = torch.float32 if device == "cpu" else torch.float16
    base = StableDiffusionPipeline.from_pretrained(models["base"], dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False)
    nets = [ControlNetModel.from_pretrained(models[k], dtype=dtype) for k in ("depth", "pose")]
    components = dict(base.components)
    pipe = StableDiffusionControlNetPipeline(**components, controlnet=MultiControlNetModel(nets),
                                             requires_safety_checker=False)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)

    def to_tensor(a: np.ndarray, scale: float) -> torch.Tensor:
        t = torch.from_numpy(a.astype(np.float32) / scale)
        return t.unsqueeze(0).expand(3, -1, -1) if t.ndim == 2 else t.permute(2, 0, 1)

    def run(n: int) -> float:
        elapsed = 0.0
        for start in range(0, n, args.batch_size):
            idx = list(range(start, min(n, start + args.batch_size)))
            depth = torch.stack([to_tensor(depth_map(i, args.frames, args.size), 65535.0) for i in idx])
            pose = torch.stack([to_tensor(pose_map(i, args.size), 255.0) for i in idx])
            gens = [torch.Generator("cpu").manual_seed(2) for _ in idx]
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            pipe(["a car chase at night"] * len(idx), negative_prompt=["blurry"] * len(idx), image=[depth, pose],
                 num_inference_steps=args.steps, guidance_scale=7.5, width=args.size, height=args.size,
                 generator=gens, output_type="pil")
            if device == "cuda":
                torch.cuda.synchronize()
            elapsed += time.perf_counter() - t0
        return elapsed

    run(min(args.batch_size, args.frames))
    return run(args.frames)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mid", choices=["tiny", "mid", "sd15"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    parser.add_argument("--models-dir", default=None, help="reuse models written earlier (default: a temp dir)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare-diffusers comparison")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory(prefix="vf-bench-") as tmp:
        models_dir = Path(args.models_dir or Path(tmp) / "models")
        if not (models_dir / "sd15" / "model_index.json").exists():
            make_tiny_models(models_dir, args.preset)
        models = model_paths(models_dir, "base", "depth", "pose")
        engine = run_engine(args, models, Path(tmp) / "data")
        baseline = None if args.no_baseline else run_baseline(args, models, engine["device"])

    n = args.frames
    model_s = engine["engine_model_s"]
    result = {
        "preset": args.preset, "size": args.size, "frames": n, "steps": args.steps, "batch_size": args.batch_size,
        "device": engine["device"], "torch_threads": _threads(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "engine_startup_s": round(engine["startup_s"], 2),
        "first_job_s": round(engine["first_job_s"], 2), "model_load_s": round(engine["first_load_s"], 2),
        # Model time is measured inside the engine around each pipeline call, in the same
        # run as the wall time, so a busy shared machine slows both alike.
        "per_frame_model_s": round(model_s / n, 4),
        "per_frame_end_to_end_s": round(engine["wall_s"] / n, 4),
        "per_frame_overhead_s": round((engine["wall_s"] - model_s) / n, 4),
        "overhead_pct_of_model": round(100 * (engine["wall_s"] - model_s) / model_s, 2),
        "in_engine_overhead_pct": round(100 * (engine["engine_run_s"] - model_s) / model_s, 2),
        # Sanity check that the engine's pipeline calls cost what bare diffusers costs.
        "bare_diffusers_per_frame_s": None if baseline is None else round(baseline / n, 4),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


if __name__ == "__main__":
    sys.exit(main())
