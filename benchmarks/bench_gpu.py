"""GPU-path benchmark (issue 15 part 4): a plain diffusers loop and the engine, side by side in one run.

Models: random weights of a preset (``python -m engine make-tiny-models --preset``); ``sd15`` is
the full-size SD 1.5 UNet + depth ControlNet (the FLOPs of the real ones), ``mid`` a 23.5M-param
stand-in for the CPU. One depth ControlNet, a distinct depth map and seed per frame (no cache hits).

(a) plain diffusers: ``StableDiffusionControlNetPipeline`` + UniPC, one frame per call, the
    pipeline's default guidance (7.5, so CFG), ``output_type="pil"``, as a user would write it;
    at 4 steps (to compare with b) and at 25 steps (to compare with c).
(b) the engine, draft tier, 4 steps (``DRAFT`` below), batches of ``--batch-size``.
(c) the engine, final tier, 25 steps, guidance 7.5 (CFG), batches of ``--batch-size``.
(d) FLOW shots: ``--shots`` shots interleaved vs one after another (benchmarks/bench_interleave.py).
The engine runs as the add-on starts it (core/client/process.py) and every frame is fetched as PNG
over HTTP; fps = frames / (submit to last frame fetched). Each engine figure follows an unmeasured
warm-up job of the same shape, whose time is printed (with ``--compile`` it holds the compile).

CPU:  .venv-engine/bin/python benchmarks/bench_gpu.py --preset mid --size 128 --frames 4
GPU:  python benchmarks/bench_gpu.py --preset sd15 --size 512 --device cuda --frames 32 [--compile] [--precision bf16]
Targets (H100/H200): (b) >= 40 fps and >= 4x (a) at 4 steps; (c) >= 5 fps; (d) >= 2.5x sequential.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, depth_map, load_core, make_tiny_models, model_paths, png, run_job  # noqa: E402

# (b): the draft tier (engine/models/draft.py): LCM scheduler, 4 steps, no CFG, with the random-weight
# distillation LoRA that make-tiny-models writes for the preset's UNet (``models["draft_lora"]``).
DRAFT: dict[str, Any] = {"tier": "draft", "draft": {"steps": 4, "scheduler": "LCM"}}
FINAL: dict[str, Any] = {"steps": 25, "guidance_scale": 7.5}
PROMPT, NEGATIVE = "a car chase at night, film still", "blurry"


def plain_loop(models: dict[str, str], args: argparse.Namespace, steps: int) -> dict[str, float]:
    """(a) One frame per call through bare diffusers; seconds and fps after one warm-up call."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UniPCMultistepScheduler

    device = args.device
    dtype = torch.float32 if device == "cpu" else torch.float16
    net = ControlNetModel.from_pretrained(models["depth"], torch_dtype=dtype)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(models["base"], controlnet=net, torch_dtype=dtype,
                                                             safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)

    def frame(i: int) -> Any:
        depth = torch.from_numpy(depth_map(i, args.frames, args.size).astype(np.float32) / 65535.0)
        image = depth.unsqueeze(0).expand(3, -1, -1).unsqueeze(0)
        return pipe(PROMPT, negative_prompt=NEGATIVE, image=image, num_inference_steps=steps,
                    width=args.size, height=args.size, generator=torch.Generator("cpu").manual_seed(i),
                    output_type="pil").images[0]

    frame(0)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(args.frames):
        frame(i)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    del pipe, net
    return {"s": seconds, "fps": args.frames / seconds}


def engine_runs(models: dict[str, str], args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """(b) and (c) through one engine process: a warm-up job then a measured one, for each tier."""
    _, process_mod = load_core()
    env = {"HF_HUB_OFFLINE": "1", "VIEWFINDER_ENGINE_PRECISION": args.precision}
    engine = process_mod.LocalEngine(sys.executable, extension_dir=ROOT, data_dir=str(data_dir),
                                     log_path=data_dir / "engine.log", device=args.device, env=env,
                                     compile_models=args.compile, startup_timeout=600)
    client = engine.start()
    try:
        shas = [client.upload_blob(png(depth_map(i, args.frames, args.size))) for i in range(args.frames)]

        def run(tier: dict[str, Any], seed: int, n: int) -> tuple[dict[str, Any], float]:
            body = {"shot": "bench", "prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": seed,
                    "width": args.size, "height": args.size, "batch_size": args.batch_size, "device": args.device,
                    "models": {"base": models["base"], "controlnet_depth": models["depth"],
                               "controlnet_pose": None},
                    "frames": [{"frame": i, "depth": shas[i]} for i in range(n)], **tier}
            return run_job(client, body, data_dir, poll_s=0.005)

        out: dict[str, Any] = {"device": client.health()["device"]}
        draft = {**DRAFT, "draft": {**DRAFT["draft"], "lora": models["draft_lora"]}}
        for name, tier, seed in (("draft", draft, 10), ("final", FINAL, 20)):
            warm, warm_s = run(tier, seed, min(args.batch_size, args.frames))
            status, wall = run(tier, seed + 1, args.frames)
            out[name] = {"s": wall, "fps": args.frames / wall, "warmup_job_s": warm_s,
                         "compile_warmup_s": warm["timings"].get("compile_warmup_s"),
                         "model_s": status["timings"]["model_s"]}
        return out
    finally:
        engine.stop()


def interleave(args: argparse.Namespace) -> dict[str, Any] | str:
    """(d) from benchmarks/bench_interleave.py (FLOW interleaving), when it is there."""
    path = Path(__file__).with_name("bench_interleave.py")
    if not path.exists():
        return "pending (bench_interleave)"
    spec = importlib.util.spec_from_file_location("bench_interleave", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.run(args.preset, args.device, args.size, FINAL["steps"] if args.device == "cuda" else 4,
                           args.frames, args.shots))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mid", choices=["tiny", "mid", "sd15"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=4, help="frames per measured run")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--shots", type=int, default=4, help="FLOW shots for (d)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    parser.add_argument("--compile", action="store_true", help="the engine with torch.compile (the preference)")
    parser.add_argument("--models-dir", default=None, help="reuse models written earlier (default: a temp dir)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: a,b,c,d")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    with tempfile.TemporaryDirectory(prefix="vf-bench-gpu-") as tmp:
        models_dir = Path(args.models_dir or Path(tmp) / "models")
        if not (models_dir / "sd15" / "model_index.json").exists():
            make_tiny_models(models_dir, args.preset, "--no-video")
        models = model_paths(models_dir, "base", "depth", "draft_lora")
        result: dict[str, Any] = {"preset": args.preset, "size": args.size, "frames": args.frames,
                                  "batch_size": args.batch_size, "precision": args.precision,
                                  "compile": args.compile, "machine": platform.machine()}
        if args.device == "cuda":
            import torch

            result["gpu"] = torch.cuda.get_device_name(0)
        if "a" not in skip:
            result["a_plain_4"] = plain_loop(models, args, 4)
            print("a_plain_4", result["a_plain_4"], flush=True)
            result["a_plain_25"] = plain_loop(models, args, 25)
            print("a_plain_25", result["a_plain_25"], flush=True)
        if not {"b", "c"} <= skip:
            engine = engine_runs(models, args, Path(tmp) / "data")
            result["device"] = engine["device"]
            result["b_draft_4"], result["c_final_25"] = engine["draft"], engine["final"]
        if "d" not in skip:
            result["d_flow_interleaved"] = interleave(args)
    for name, base in (("b_draft_4", "a_plain_4"), ("c_final_25", "a_plain_25")):
        if name in result and base in result:
            result[name]["ratio_to_a"] = result[name]["fps"] / result[base]["fps"]
    print(json.dumps(result, indent=2, default=lambda v: round(v, 4) if isinstance(v, float) else str(v)))
    rows = [("(a) plain diffusers, 4 steps, CFG, 1 frame/call", "a_plain_4"),
            ("(a) plain diffusers, 25 steps, CFG, 1 frame/call", "a_plain_25"),
            ("(b) engine draft, 4 steps", "b_draft_4"), ("(c) engine final, 25 steps, CFG", "c_final_25")]
    for label, key in rows:
        if key in result:
            ratio = result[key].get("ratio_to_a")
            print(f"{label:52s} {result[key]['fps']:8.3f} fps" + (f"   {ratio:5.2f}x (a)" if ratio else ""))
    d = result.get("d_flow_interleaved")
    if isinstance(d, dict):
        print(f"(d) {args.shots} FLOW shots interleaved vs sequential: {d.get('ratio')}x "
              f"({d.get('interleaved_fps')} vs {d.get('sequential_fps')} fps)")
    elif d:
        print(f"(d) {d}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
