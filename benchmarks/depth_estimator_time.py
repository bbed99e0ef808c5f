"""Milliseconds per frame of the Depth Anything Small architecture (random weights) on the CPU.

    .venv-engine/bin/python benchmarks/depth_estimator_time.py [--frames N] [--height 294] [--width 518] [--threads N]

What a user would otherwise run to get a depth map per frame: the monocular estimator
`bench_conditioning.py` compares the control maps against (it runs this in a subprocess,
in the same run). The architecture of HF's `depth-anything/Depth-Anything-V2-Small-hf`
config: a DINOv2-small backbone (hidden 384, 12 layers, 6 heads, patch 14, features
from layers 3/6/9/12), DPT neck [48, 96, 192, 384], fusion 64; weights are random (the
cost does not depend on them). Torch uses as many threads as the process may use cores.
Every call is timed, the first one included; model construction is not. Prints one
JSON line: {"ms_per_frame", "first_ms", "cpu_ms_per_frame" (CPU time of all threads,
less sensitive to the machine's load), "frames", "threads", "params_m", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--height", type=int, default=294)
    parser.add_argument("--width", type=int, default=518)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the cores this process may use)")
    args = parser.parse_args()

    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    backbone = Dinov2Config(
        image_size=518, patch_size=14, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
        out_indices=[3, 6, 9, 12], reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, patch_size=14, reassemble_hidden_size=384,
        neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32,
    )
    model = DepthAnythingForDepthEstimation(config).eval()
    pixels = torch.randn(1, 3, args.height, args.width)
    times = []
    cpu0 = time.process_time()
    with torch.inference_mode():
        for _ in range(args.frames):
            t0 = time.perf_counter()
            depth = model(pixel_values=pixels).predicted_depth
            times.append((time.perf_counter() - t0) * 1000.0)
    cpu = (time.process_time() - cpu0) * 1000.0 / args.frames
    print(json.dumps({
        "ms_per_frame": sum(times) / len(times),
        "first_ms": times[0],
        "cpu_ms_per_frame": cpu,
        "frames": args.frames,
        "threads": threads,
        "size": [args.height, args.width],
        "output": list(depth.shape),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
