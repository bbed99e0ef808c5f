"""SDXL with its union ControlNet at 1024² against SD 1.5 at 512², side by side in one run (issue 24).

Models: random weights at full size (``--preset full``): SD 1.5's UNet, VAE and depth + pose ControlNets
(``make-tiny-models --preset sd15``) and SDXL base 1.0's UNet and VAE with xinsir's union ControlNet
(``engine.testing.tiny_families.write_sdxl_full``, fp16 on disk; the text encoders have SDXL's widths but two
layers, as a prompt is encoded once per job). The FLOPs per frame are the real models'; the frames are noise.
``--preset tiny`` runs the same jobs on the tiny models, to check the script on a CPU.

Each run goes through the engine as the add-on starts it (core/client/process.py), every frame fetched as PNG
over HTTP, after an unmeasured warm-up job of the same shape; a distinct map set and seed per frame (no cache
hits); fps = frames / (submit to last frame fetched). Runs:
(a) SD 1.5 + depth and pose ControlNets (two nets), 512 x 512.
(b) SDXL + the union ControlNet, depth and pose in one fused pass, 1024 x 1024.
(c) SDXL + the union ControlNet, all five maps (depth, pose, normal, line art, seg) in one pass, 1024 x 1024.

GPU: python benchmarks/bench_families.py --device cuda --frames 16 --batch-size 4 --steps 20
CPU: .venv-engine/bin/python benchmarks/bench_families.py --preset tiny --frames 2 --steps 2 --sd15-size 64 --sdxl-size 64
Not yet run on a GPU (none was lent to this work): docs/benchmarks.md has no figure for it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, depth_map, load_core, make_tiny_models, png, pose_map, run_job  # noqa: E402

PROMPT, NEGATIVE = "a car chase at night, film still", "blurry"


def models_for(preset: str, out: Path) -> dict[str, dict[str, Any]]:
    """The request ``models`` of each run, writing the random-weight models into ``out``."""
    if preset == "tiny":
        make_tiny_models(out, "tiny", "--no-video")
        sdxl, union = out / "sdxl", out / "controlnet-union-sdxl"
    else:
        make_tiny_models(out, "sd15", "--no-video", "--no-families")
        sys.path.insert(0, str(ROOT))
        from engine.testing.tiny_families import write_sdxl_full

        paths = write_sdxl_full(out)
        sdxl, union = paths["sdxl_full"], paths["union_sdxl_full"]
    return {"sd15": {"base": str(out / "sd15"), "controlnet_depth": str(out / "controlnet-depth"),
                     "controlnet_pose": str(out / "controlnet-pose")},
            "sdxl": {"family": "sdxl", "base": str(sdxl), "controlnet_union": str(union)}}


def extra_maps(i: int, size: int) -> dict[str, np.ndarray]:
    """Normal (RGB), line art (grey) and seg (ADE20K class indices) maps for frame ``i``."""
    y, x = np.mgrid[0:size, 0:size]
    normal = np.stack([(x * 255 // size), (y * 255 // size), np.full_like(x, 200)], -1).astype(np.uint8)
    lineart = np.zeros((size, size), np.uint8)
    lineart[:, (i * 5) % size] = lineart[(i * 3) % size, :] = 255
    seg = np.where(y < size // 3, 2, 1).astype(np.uint8)  # sky above, building below
    return {"normal": normal, "lineart": lineart, "seg": seg}


def frames(client: Any, n: int, size: int, kinds: tuple[str, ...], offset: int) -> list[dict[str, Any]]:
    """``n`` frames with distinct maps of ``kinds`` uploaded at ``size``."""
    out = []
    for i in range(n):
        maps = {"depth": depth_map(i + offset, n + offset, size), "pose": pose_map(i + offset, size),
                **(extra_maps(i + offset, size) if len(kinds) > 2 else {})}
        out.append({"frame": i + 1, **{k: client.upload_blob(png(maps[k])) for k in kinds}})
    return out


def run(client: Any, args: argparse.Namespace, models: dict[str, Any], size: int, kinds: tuple[str, ...],
        data_dir: Path) -> dict[str, Any]:
    """A warm-up job, then the measured one: fps and the engine's own timings."""
    def body(seed: int, n: int, offset: int) -> dict[str, Any]:
        return {"shot": "bench", "prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": seed, "steps": args.steps,
                "guidance_scale": 7.5, "width": size, "height": size, "batch_size": args.batch_size,
                "device": args.device, "models": models, "frames": frames(client, n, size, kinds, offset)}

    _, warm_s = run_job(client, body(1, min(args.batch_size, args.frames), 1000), data_dir, poll_s=0.005)
    status, wall = run_job(client, body(2, args.frames, 0), data_dir, poll_s=0.005)
    return {"size": size, "maps": list(kinds), "s": wall, "fps": args.frames / wall, "s_per_frame": wall / args.frames,
            "warmup_job_s": warm_s, "load_s": status["timings"]["load_s"], "model_s": status["timings"]["model_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sd15-size", type=int, default=512)
    parser.add_argument("--sdxl-size", type=int, default=1024)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    parser.add_argument("--models", default=None, help="a folder to write (or reuse) the random-weight models in")
    parser.add_argument("--json", default=None, help="write the figures here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vf-bench-families-") as scratch:
        where = Path(args.models or scratch) / "models"
        models = models_for(args.preset, where)
        _, process_mod = load_core()
        data_dir = Path(scratch) / "engine"
        engine = process_mod.LocalEngine(sys.executable, extension_dir=ROOT, data_dir=str(data_dir),
                                         log_path=Path(scratch) / "engine.log", device=args.device,
                                         env={"HF_HUB_OFFLINE": "1", "VIEWFINDER_ENGINE_PRECISION": args.precision},
                                         startup_timeout=600, max_pipelines=1)
        client = engine.start()
        try:
            result = {"device": client.health()["device"], "machine": platform.node(), "args": vars(args),
                      "a_sd15": run(client, args, models["sd15"], args.sd15_size, ("depth", "pose"), data_dir),
                      "b_sdxl_union": run(client, args, models["sdxl"], args.sdxl_size, ("depth", "pose"), data_dir),
                      "c_sdxl_union_5": run(client, args, models["sdxl"], args.sdxl_size,
                                            ("depth", "pose", "normal", "lineart", "seg"), data_dir)}
        finally:
            engine.stop()
    for key, label in (("a_sd15", "(a) SD 1.5 + depth, pose nets"), ("b_sdxl_union", "(b) SDXL + union, 2 maps"),
                       ("c_sdxl_union_5", "(c) SDXL + union, 5 maps")):
        r = result[key]
        print(f"{label:32s} {r['size']:5d}px  {r['fps']:8.3f} fps  {r['s_per_frame']:7.3f} s/frame")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
