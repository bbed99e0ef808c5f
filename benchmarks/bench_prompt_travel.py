"""Prompt travel benchmark: does blending prompts per frame cost throughput?

Protocol
1. Random-weight models of a preset (``python -m engine make-tiny-models --preset``), a real
   engine process started through the add-on's ``core/client/process.py``.
2. Warm-up job (loads the pipeline), not measured.
3. Three measured jobs over the same ``--frames`` frames (distinct depth + pose maps), each
   with a fresh seed so nothing comes from the cache, in batches of ``--batch-size``:
   - ``plain``: one prompt for the whole shot (what every shot did before prompt travel);
   - ``travel``: two prompt keys cross-fading over the shot, so every frame is a distinct blend;
   - ``weights``: the plain prompt but a depth weight that changes every frame, which
     splits every batch into single frames (what travel would cost if blends broke batches).
   The three run in turn ``--repeats`` times (fresh seeds each time) and the fastest run of
   each counts: on a shared machine the load changes between runs, and interleaving plus the
   minimum keeps that out of the comparison.
Figures: seconds of model time per frame (measured by the engine around its pipeline
calls) and end-to-end seconds per frame. Target: travel within 10% of plain.

CPU:  .venv-engine/bin/python benchmarks/bench_prompt_travel.py --preset mid --size 128
GPU:  .venv-engine/bin/python benchmarks/bench_prompt_travel.py --preset sd15 --size 512 --device cuda \
          --steps 20 --frames 16 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, depth_map, load_core, make_tiny_models, png, pose_map  # noqa: E402

logger = logging.getLogger("bench_prompt_travel")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mid", choices=["tiny", "mid", "sd15"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models-dir", default=None, help="reuse models written earlier (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory(prefix="vf-bench-travel-") as tmp:
        models_dir = Path(args.models_dir or Path(tmp) / "models")
        if not (models_dir / "sd15" / "model_index.json").exists():
            make_tiny_models(models_dir, args.preset)
        client_mod, process_mod = load_core()
        data_dir = Path(tmp) / "data"
        engine = process_mod.LocalEngine(sys.executable, extension_dir=ROOT, data_dir=str(data_dir),
                                         log_path=data_dir / "engine.log", device=args.device,
                                         env={"HF_HUB_OFFLINE": "1"})
        client = engine.start()
        try:
            n = args.frames
            shas = [(client.upload_blob(png(depth_map(i, n, args.size))),
                     client.upload_blob(png(pose_map(i, args.size)))) for i in range(n)]

            def job(seed: int, kind: str) -> dict[str, Any]:
                frames: list[dict[str, Any]] = [{"frame": i, "depth": d, "pose": p} for i, (d, p) in enumerate(shas)]
                body: dict[str, Any] = {
                    "shot": "bench", "prompt": "a quiet street at dusk", "negative_prompt": "blurry", "seed": seed,
                    "steps": args.steps, "guidance_scale": 7.5, "width": args.size, "height": args.size,
                    "batch_size": args.batch_size, "device": args.device,
                    "models": {"base": str(models_dir / "sd15"),
                               "controlnet_depth": str(models_dir / "controlnet-depth"),
                               "controlnet_pose": str(models_dir / "controlnet-pose")},
                    "frames": frames,
                }
                if kind == "travel":
                    body["prompt_keys"] = ["a quiet street at dusk", "the street in flames"]
                    for i, frame in enumerate(frames):
                        t = (i + 1) / (n + 1)  # strictly between 0 and 1: every frame a blend
                        frame["prompt_weights"] = [round(1 - t, 4), round(t, 4)]
                elif kind == "weights":
                    for i, frame in enumerate(frames):
                        frame["depth_weight"] = round(0.5 + 0.5 * i / max(1, n - 1), 4)
                return body

            def run(body: dict[str, Any]) -> dict[str, Any]:
                t0 = time.perf_counter()
                job_id = client.submit(body)
                while (status := client.status(job_id))["status"] not in ("done", "failed", "cancelled"):
                    time.sleep(0.02)
                if status["status"] != "done":
                    raise RuntimeError(f"benchmark job ended {status['status']}: {status['error']}")
                status["wall_s"] = time.perf_counter() - t0
                return status

            run({**job(1, "plain"), "frames": job(1, "plain")["frames"][: args.batch_size]})
            figures: dict[str, Any] = {"preset": args.preset, "size": args.size, "frames": n, "steps": args.steps,
                                       "batch_size": args.batch_size, "device": client.health()["device"]}
            kinds = ("plain", "travel", "weights")
            for repeat in range(args.repeats):
                for index, kind in enumerate(kinds):
                    status = run(job(10 + 10 * repeat + index, kind))
                    for name, value in (("model", status["timings"]["model_s"]), ("end_to_end", status["wall_s"])):
                        key = f"{kind}_{name}_s_per_frame"
                        figures[key] = round(min(figures.get(key, float("inf")), value / n), 4)
            figures["travel_vs_plain"] = round(figures["travel_model_s_per_frame"] /
                                               figures["plain_model_s_per_frame"], 3)
            figures["weights_vs_plain"] = round(figures["weights_model_s_per_frame"] /
                                                figures["plain_model_s_per_frame"], 3)
        finally:
            engine.stop()
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
