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
import importlib
import importlib.util
import io
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_engine")


def load_core() -> tuple[Any, Any]:
    spec = importlib.util.spec_from_file_location("vf_core_bench", ROOT / "core" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "core")])
    assert spec and spec.loader
    package = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = package
    spec.loader.exec_module(package)
    return (importlib.import_module("vf_core_bench.client.http"),
            importlib.import_module("vf_core_bench.client.process"))


def depth_map(i: int, n: int, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    blob = np.exp(-(((x - 0.2 - 0.6 * i / max(1, n - 1)) ** 2 + (y - 0.5) ** 2) / 0.02))
    return (np.clip(0.2 * (1 - y) + 0.8 * blob, 0, 1) * 65535).astype(np.uint16)


def pose_map(i: int, size: int) -> np.ndarray:
    array = np.zeros((size, size, 3), np.uint8)
    cx = size // 4 + (i * 7) % (size // 2)
    array[size // 6 : size // 6 + 6, cx - 3 : cx + 3] = (255, 0, 0)
    array[size // 5 : size * 3 // 5, cx - 2 : cx + 2] = (0, 255, 0)
    return array


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def run_job(client: Any, body: dict[str, Any], fetch_dir: Path, poll_s: float = 0.02) -> tuple[dict[str, Any], float]:
    """Submit ``body``, poll until it ends, fetch its frames into ``fetch_dir``: (final status, wall seconds)."""
    t0 = time.perf_counter()
    job_id = client.submit(body)
    while (status := client.status(job_id))["status"] not in ("done", "failed", "cancelled"):
        time.sleep(poll_s)
    fetch_dir.mkdir(parents=True, exist_ok=True)
    for n in status["frames"]:
        client.fetch_frame(job_id, n, str(fetch_dir / f"{job_id}-{n:04d}.png"))
    if status["status"] != "done":
        raise RuntimeError(f"benchmark job ended {status['status']}: {status['error']}")
    return status, time.perf_counter() - t0


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
            subprocess.run([sys.executable, "-m", "engine", "make-tiny-models", str(models_dir), "--preset",
                            args.preset], cwd=ROOT, check=True, capture_output=True)
        models = {"base": str(models_dir / "sd15"), "depth": str(models_dir / "controlnet-depth"),
                  "pose": str(models_dir / "controlnet-pose")}
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
