"""INDEPENDENT vs FLOW (and FLOW's method variants) on the demo's shots: warp error and depth fidelity.

    .venv-engine/bin/python benchmarks/bench_coherence.py [--long-edge 192] [--steps 4] [--models DIR] [--device cuda]

1. Control maps: the demo film (``demo/scene.py``: Dolly 1-24, Pan 25-48, Orbit 49-72) is
   built in headless Blender (``.venv``, a child process running this file with
   ``--render-maps``) with the extension installed into a throwaway user folder, and each
   shot's maps are rendered at the generation size.
2. Generation: the engine's own ``JobManager`` in this process (the code an HTTP job runs),
   one job per shot and variant, same models, prompt and seed. Tiny random-weight models by
   default (``make-tiny-models``); ``--models DIR`` takes a folder with ``sd15``,
   ``controlnet-depth`` and ``controlnet-pose`` (real weights: see engine/COHERENCE.md).
3. Metrics: ``engine.metrics.take.measure_take`` on each take (what ``python -m engine metrics``
   prints), one table row per variant and shot, and overall (frame-weighted mean).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

# Tiny models on a 2-core machine: OpenMP spinning makes them 10-25x slower (tests/conftest.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, make_tiny_models  # noqa: E402

BLENDER_PYTHON = ROOT / ".venv" / "bin" / "python"
PROMPTS = {
    "Dolly": "a lone traveller walks down an empty street between old brick buildings",
    "Pan": "the street seen from the corner, the traveller crossing, shop signs",
    "Orbit": "close on the traveller, buildings behind, dramatic sky",
}


def maps_source(long_edge: int) -> str:
    """A hash of what the control maps depend on: the demo scene, the conditioning code, the size."""
    digest = hashlib.sha256(str(long_edge).encode())
    for path in sorted([ROOT / "demo" / "scene.py", *(ROOT / "core" / "conditioning").glob("*.py")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def render_maps(out: Path, long_edge: int) -> None:
    """In Blender's Python: build the demo film and render each shot's control maps under ``out``."""
    home = Path(tempfile.mkdtemp(prefix="vf-bench-home-"))
    os.environ["HOME"] = str(home)
    os.environ["XDG_CONFIG_HOME"] = str(home / ".config")
    import importlib

    import bpy

    sys.path.insert(0, str(ROOT))
    from demo.run_demo import install_extension
    from demo.scene import build_demo_scene

    module = install_extension()
    vf = importlib.import_module(module)
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    build_demo_scene(scene)
    render = scene.render
    width, height = vf.core.resolution.generation_size(render.resolution_x, render.resolution_y,
                                                       render.pixel_aspect_x, render.pixel_aspect_y, long_edge)
    shots = []
    for shot in scene.viewfinder.shots:
        cond = out / shot.name / "conditioning"
        started = time.perf_counter()
        vf.core.conditioning.render_shot(scene, shot, cond, width=width, height=height)
        shots.append({"name": shot.name, "frames": [shot.frame_start, shot.frame_end]})
        print(f"[bench] maps {shot.name}: frames {shot.frame_start}-{shot.frame_end} at {width}x{height} "
              f"in {time.perf_counter() - started:.1f} s", flush=True)
    (out / "shots.json").write_text(json.dumps({"width": width, "height": height, "shots": shots,
                                                "source": maps_source(long_edge)}))
    bpy.ops.preferences.addon_disable(module=module)


def variants() -> dict[str, tuple[dict, object | None]]:
    """name -> (coherence request, FlowMethod override)."""
    from engine.coherence.strategies import BLURRY_FLOW_METHOD, FLOW_METHOD, FlowMethod

    flow = {"mode": "FLOW", "strength": 0.55, "keyframe_interval": 0}
    plain = FlowMethod(keep_until=0.0, paste=0.0, color_match=True)
    pasted = replace(plain, paste=0.75)
    return {
        "INDEPENDENT": ({"mode": "INDEPENDENT"}, None),
        "FLOW img2img": (flow, plain),
        "FLOW img2img + latent blend": (flow, replace(plain, keep_until=1.0)),
        "FLOW img2img + paste 0.5": (flow, replace(plain, paste=0.5)),
        "FLOW img2img + paste 0.75": (flow, pasted),
        "FLOW img2img + paste 0.75 + latent blend": (flow, replace(pasted, keep_until=1.0)),
        "FLOW img2img + paste 0.75, no colour match": (flow, replace(pasted, color_match=False)),
        "FLOW img2img + paste 0.75, keyframe every 12": ({**flow, "keyframe_interval": 12}, pasted),
        "FLOW before sharp FLOW (bilinear warp, plain paste)": (flow, BLURRY_FLOW_METHOD),
        "FLOW default": (flow, FLOW_METHOD),
    }


def generate_and_measure(out: Path, models_dir: Path, steps: int, only: list[str] | None,
                         device: str = "cpu") -> list[dict]:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from engine.coherence import strategies as coherence
    from engine.contract.schema import JobRequest
    from engine.jobs.manager import JobManager
    from engine.metrics.take import measure_take
    from engine.storage import Storage

    info = json.loads((out / "shots.json").read_text())
    storage = Storage(out / "engine-data")
    manager = JobManager(storage, default_device=device, max_pipelines=1)
    manager.start()
    rows = []
    default_method = coherence.FLOW_METHOD
    try:
        for name, (spec, method) in variants().items():
            if only and name not in only:
                continue
            coherence.FLOW_METHOD = method or default_method
            for shot in info["shots"]:
                cond = out / shot["name"] / "conditioning"
                meta = json.loads((cond / "meta.json").read_text())
                frames = []
                for n in meta["frames"]:
                    entry = {"frame": n}
                    for kind, path in (("depth", cond / "depth" / f"{n:04d}.png"),
                                       ("pose", cond / "pose" / f"{n:04d}.png"),
                                       ("flow", cond / "flow" / f"{n:04d}.npy")):
                        if kind == "pose" and not (meta.get("pose_frames") or {}).get(str(n)):
                            entry[kind] = None
                            continue
                        data = path.read_bytes()
                        sha = hashlib.sha256(data).hexdigest()
                        storage.put_blob(sha, data)
                        entry[kind] = sha
                    frames.append(entry)
                request = JobRequest.model_validate({
                    "shot": shot["name"], "prompt": PROMPTS.get(shot["name"], ""),
                    "style_prompt": "cinematic still, overcast light, muted colours, 35mm film grain",
                    "negative_prompt": "blurry, deformed, text, watermark", "seed": 1234, "steps": steps,
                    "guidance_scale": 7.5, "width": info["width"], "height": info["height"], "batch_size": 4,
                    "device": device, "frames": frames,
                    "models": {"base": str(models_dir / "sd15"),
                               "controlnet_depth": str(models_dir / "controlnet-depth"),
                               "controlnet_pose": str(models_dir / "controlnet-pose")},
                    "coherence": {**spec, **({"depth_range": [meta["near"], meta["far"]]}
                                             if spec["mode"] == "FLOW" else {})},
                })
                started = time.perf_counter()
                job = manager.submit(request)
                while job.status not in ("done", "failed", "cancelled"):
                    time.sleep(0.05)
                if job.status != "done":
                    raise SystemExit(f"{name} / {shot['name']}: job {job.status}: {job.error}")
                take = out / "takes" / "".join(c if c.isalnum() else "_" for c in name) / shot["name"]
                take_dir = take / "takes" / "001"
                if take_dir.exists():
                    shutil.rmtree(take_dir)
                take_dir.mkdir(parents=True)
                if not (take / "conditioning").exists():
                    (take / "conditioning").symlink_to(cond)
                for n, key in job.done.items():
                    shutil.copyfile(storage.frame_path(key), take_dir / f"{n:04d}.png")
                keyframes = (job.detail or {}).get("keyframes")
                (take_dir / "take.json").write_text(json.dumps({"shot": shot["name"], "take": "001",
                                                                "settings": {"coherence": spec},
                                                                "keyframes": keyframes or []}))
                metrics = measure_take(take_dir)
                rows.append({"variant": name, "shot": shot["name"], "frames": metrics.frames,
                             "warp_error": metrics.warp_error, "depth_edge_corr": metrics.depth_edge_corr,
                             "sharpness_kept": metrics.sharpness_kept, "pairs": metrics.pairs, "keyframes": keyframes, "seconds": time.perf_counter() - started,
                             "errors": metrics.warp_errors, "corrs": metrics.correlations})
                print(f"[bench] {name:26s} {shot['name']:6s} warp_error {metrics.warp_error:6.2f}  "
                      f"depth_edge_corr {metrics.depth_edge_corr:.3f}  sharpness_kept {metrics.sharpness_kept:.2f}  "
                      f"keyframes {keyframes}  "
                      f"{rows[-1]['seconds']:.1f} s", flush=True)
            shot_rows = [r for r in rows if r["variant"] == name]
            errors = [e for r in shot_rows for e in r["errors"]]
            corrs = [c for r in shot_rows for c in r["corrs"]]
            rows.append({"variant": name, "shot": "all", "frames": sum(r["frames"] for r in shot_rows),
                         "warp_error": float(np.mean(errors)), "depth_edge_corr": float(np.mean(corrs)),
                         "sharpness_kept": float(np.average([r["sharpness_kept"] for r in shot_rows],
                                                            weights=[r["frames"] for r in shot_rows])),
                         "pairs": len(errors), "keyframes": None, "seconds": sum(r["seconds"] for r in shot_rows),
                         "errors": [], "corrs": []})
    finally:
        coherence.FLOW_METHOD = default_method
        manager.stop()
    return rows


def table(rows: list[dict], settings: str) -> str:
    base = {r["shot"]: r for r in rows if r["variant"] == "INDEPENDENT"}
    lines = [f"Settings: {settings}", "",
             "| variant | shot | frames | warp error (/255, lower is steadier) | vs INDEPENDENT | "
             "depth-edge corr (higher follows the map) | minus INDEPENDENT | sharpness kept |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = base.get(r["shot"])
        ratio = f"{r['warp_error'] / b['warp_error']:.2f}x" if b else ""
        # An absolute difference: with tiny models both correlations sit near 0, where a ratio means nothing.
        corr = f"{r['depth_edge_corr'] - b['depth_edge_corr']:+.3f}" if b else ""
        lines.append(f"| {r['variant']} | {r['shot']} | {r['frames']} | {r['warp_error']:.2f} | {ratio} | "
                     f"{r['depth_edge_corr']:.3f} | {corr} | {r.get('sharpness_kept', float('nan')):.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "coherence"))
    parser.add_argument("--long-edge", type=int, default=192)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--models", default=None, help="folder with sd15, controlnet-depth, controlnet-pose")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps", "auto"])
    parser.add_argument("--variant", action="append", default=None, help="run only these variants")
    parser.add_argument("--render-maps", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if args.render_maps:
        render_maps(out, args.long_edge)
        return 0
    # 1. Control maps, in Blender (once per size).
    # Maps are reused only while the demo scene, the conditioning code and the size are unchanged.
    maps_ok = (out / "shots.json").is_file() and \
        json.loads((out / "shots.json").read_text()).get("source") == maps_source(args.long_edge)
    if not maps_ok:
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(BLENDER_PYTHON), __file__, "--render-maps", "--out", str(out),
                        "--long-edge", str(args.long_edge)], check=True, cwd=ROOT)
    # 2. Models.
    models = Path(args.models) if args.models else out / "tiny-models"
    if not args.models and not (models / "sd15").is_dir():
        make_tiny_models(models)
    # 3. Generate and measure.
    started = time.perf_counter()
    rows = generate_and_measure(out, models, args.steps, args.variant, args.device)
    info = json.loads((out / "shots.json").read_text())
    settings = (f"demo film, {info['width']}x{info['height']}, {args.steps} steps, seed 1234, "
                f"{'tiny random-weight models' if not args.models else args.models}, {args.device}, FLOW strength 0.55 "
                f"unless named, keyframe interval 0")
    print(f"[bench] generation and metrics: {time.perf_counter() - started:.0f} s (cached frames are reused)")
    text = table(rows, settings)
    print(text)
    (out / "table.md").write_text(text + "\n")
    (out / "rows.json").write_text(json.dumps([{k: v for k, v in r.items() if k not in ("errors", "corrs")}
                                               for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
