"""Sharp FLOW: the sharpness kept and the warp error of FLOW variants on a 120-frame analytic pan.

    .venv-engine/bin/python benchmarks/bench_sharp_flow.py [--frames 120] [--steps 2] [--variant NAME ...]

The cheap half of the measurement that chose FLOW's method (engine/COHERENCE.md, "Sharp
FLOW"); ``bench_coherence.py`` runs the chosen ones on the demo film. Each variant is one
job on the engine's own ``JobManager`` in this process (tiny random-weight models from
``make-tiny-models``, CPU), written out as a take and measured by ``engine.metrics.take``
(what ``python -m engine metrics`` prints).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, make_tiny_models  # noqa: E402

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def variants() -> dict[str, tuple[dict, object | None]]:
    """name -> (coherence request, FlowMethod override); the same list bench_coherence.py offers."""
    from engine.coherence.strategies import BLURRY_FLOW_METHOD, FLOW_METHOD

    flow = {"mode": "FLOW", "strength": 0.55, "keyframe_interval": 0}
    before = BLURRY_FLOW_METHOD
    cubic = replace(before, resample="cubic")
    split = replace(cubic, split_radius=2)
    return {
        "INDEPENDENT": ({"mode": "INDEPENDENT"}, None),
        "FLOW before (bilinear, paste 0.75)": (flow, before),
        "FLOW + bicubic warp": (flow, cubic),
        "FLOW + keyframe every 24": ({**flow, "keyframe_interval": 24}, before),
        "FLOW + bicubic + detail split": (flow, split),
        "FLOW + bicubic + detail split + 25% fresh detail": (flow, replace(split, fresh_detail=0.25)),
        "FLOW + bicubic + detail split + 10% fresh detail": (flow, replace(split, fresh_detail=0.1)),
        "FLOW + bicubic + detail split + detail match": (flow, replace(split, detail_match=True)),
        "FLOW + bicubic + split + 25% fresh + match": (flow, replace(split, fresh_detail=0.25, detail_match=True)),
        "FLOW + bicubic + split + 5% fresh + match": (flow, replace(split, fresh_detail=0.05, detail_match=True)),
        "FLOW + bicubic + split radius 1 + match": (flow, replace(split, split_radius=1, detail_match=True)),
        "FLOW + ... + stretch-aware paste": (flow, replace(split, fresh_detail=0.25, detail_match=True,
                                                            stretch_paste=True)),
        "FLOW default": (flow, FLOW_METHOD),
    }


def run(out: Path, models: Path, frames: int, steps: int, only: list[str] | None) -> list[dict]:
    import analytic_pan as pan

    from engine.coherence import strategies as coherence
    from engine.contract.schema import JobRequest
    from engine.jobs.manager import JobManager
    from engine.metrics.take import measure_take
    from engine.storage import Storage

    storage = Storage(out / "engine-data")
    depth, flow = pan.png_bytes(pan.depth_map()), pan.npy_bytes(pan.flow_map())
    shas = {}
    for name, data in (("depth", depth), ("flow", flow)):
        shas[name] = hashlib.sha256(data).hexdigest()
        storage.put_blob(shas[name], data)
    shot = out / "Pan"
    (shot / "conditioning" / "depth").mkdir(parents=True, exist_ok=True)
    (shot / "conditioning" / "flow").mkdir(parents=True, exist_ok=True)
    for n in range(1, frames + 1):
        (shot / "conditioning" / "depth" / f"{n:04d}.png").write_bytes(depth)
        (shot / "conditioning" / "flow" / f"{n:04d}.npy").write_bytes(flow)
    manager = JobManager(storage, default_device="cpu", max_pipelines=1)
    manager.start()
    default_method = coherence.FLOW_METHOD
    rows = []
    try:
        for name, (spec, method) in variants().items():
            if only and name not in only:
                continue
            coherence.FLOW_METHOD = method or default_method
            request = JobRequest.model_validate({
                "shot": "Pan", "prompt": "a brick wall, a street, shop signs", "seed": 7, "steps": steps,
                "guidance_scale": 5.0, "width": pan.WIDTH, "height": pan.HEIGHT, "batch_size": 4, "device": "cpu",
                "models": {"base": str(models / "sd15"), "controlnet_depth": str(models / "controlnet-depth"),
                           "controlnet_pose": None},
                "frames": [{"frame": n, "depth": shas["depth"], "flow": shas["flow"]} for n in range(1, frames + 1)],
                "coherence": spec,
            })
            started = time.perf_counter()
            job = manager.submit(request)
            while job.status not in ("done", "failed", "cancelled"):
                time.sleep(0.05)
            if job.status != "done":
                raise SystemExit(f"{name}: job {job.status}: {job.error}")
            take = shot / "takes" / "".join(c if c.isalnum() else "_" for c in name)[:60]
            shutil.rmtree(take, ignore_errors=True)
            take.mkdir(parents=True)
            for n, key in job.done.items():
                shutil.copyfile(storage.frame_path(key), take / f"{n:04d}.png")
            (take / "take.json").write_text(json.dumps({"shot": "Pan", "settings": {"coherence": spec},
                                                        "keyframes": (job.detail or {}).get("keyframes") or []}))
            metrics = measure_take(take)
            rows.append({"variant": name, "frames": metrics.frames, "warp_error": metrics.warp_error,
                         "sharpness_kept": metrics.sharpness_kept, "seconds": time.perf_counter() - started})
            print(f"[bench] {name:50s} warp_error {metrics.warp_error:6.2f}  sharpness_kept "
                  f"{metrics.sharpness_kept:.2f}  {rows[-1]['seconds']:.0f} s", flush=True)
    finally:
        coherence.FLOW_METHOD = default_method
        manager.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "sharp-flow"))
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--models", default=None, help="folder with sd15 and controlnet-depth (default: tiny)")
    parser.add_argument("--variant", action="append", default=None, help="run only these variants")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = Path(args.models) if args.models else out / "tiny-models"
    if not args.models and not (models / "sd15").is_dir():
        make_tiny_models(models)
    rows = run(out, models, args.frames, args.steps, args.variant)
    base = next((r for r in rows if r["variant"] == "INDEPENDENT"), None)
    lines = [f"Settings: analytic pan {args.frames} frames, 96x64, {args.steps} steps, seed 7, "
             f"{'tiny random-weight models' if not args.models else args.models}, CPU, FLOW strength 0.55", "",
             "| variant | warp error (/255) | vs INDEPENDENT | sharpness kept (last quarter / keyframes) |",
             "|---|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['warp_error'] / base['warp_error']:.2f}x" if base else ""
        lines.append(f"| {r['variant']} | {r['warp_error']:.2f} | {ratio} | {r['sharpness_kept']:.2f} |")
    print("\n".join(lines))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
