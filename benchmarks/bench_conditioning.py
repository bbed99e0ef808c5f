"""Milliseconds per frame for each control-map pass on the demo scene, at 512×288 and 1024×576.

    .venv/bin/python benchmarks/bench_conditioning.py [--frames N]

Target (issue 3): all passes together at most 100 ms per frame at 512×288 on a
2-core machine. Not a test: timings depend on the machine; this prints them.

"render" is the one Cycles render that produces every pass (Z, Vector, Object
Index) plus reading its EXR; the others are the work each map adds on top.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_home = Path(tempfile.mkdtemp(prefix="viewfinder-bench-home-"))
os.environ["HOME"] = str(_home)

import bpy  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from helpers import load  # noqa: E402


def demo_scene() -> bpy.types.Scene:
    spec = importlib.util.spec_from_file_location("viewfinder_demo_scene", ROOT / "demo" / "scene.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    module.build_demo_scene(scene)
    return scene


def bench(scene: bpy.types.Scene, width: int, height: int, frames: list[int], out: Path) -> dict[str, float]:
    render = load("core.conditioning.render")
    depth = load("core.conditioning.depth")
    flow = load("core.conditioning.flow")
    masks = load("core.conditioning.masks")
    pose = load("core.conditioning.pose")
    draw = load("core.conditioning.openpose_draw")
    png = load("core.conditioning.png")
    cond = load("core.conditioning")
    camera = scene.camera
    people, _ = pose.find_people(scene)
    times: dict[str, list[float]] = {k: [] for k in ("render", "depth", "flow", "masks", "pose")}
    with render.RenderGuard() as guard:
        layer = render.configure(guard, scene, camera, width, height)
        ids, legend = masks.assign_ids(scene)
        for obj, number in ids.items():
            guard.set(obj, "pass_index", number)
        names = {e["name"]: int(k) for k, e in legend.items()}
        for person in people:
            person.mask_id = names.get(person.armature.name, -1)
        render.render_frame(scene, layer, frames[0], out)  # warm-up: first sync builds everything
        for frame in frames:
            t0 = time.perf_counter()
            passes = render.render_frame(scene, layer, frame, out)
            t1 = time.perf_counter()
            png.write_png(out / "d.png", depth.encode(passes["z"], 1.0, 50.0))
            t2 = time.perf_counter()
            v = passes["vector"]
            fwd, bwd = flow.flows_from_vector_pass(v[..., 0], v[..., 1], v[..., 2], v[..., 3])
            np.save(out / "f.npy", fwd)
            np.save(out / "b.npy", bwd)
            t3 = time.perf_counter()
            png.write_png(out / "m.png", passes["index"].astype(np.uint16))
            t4 = time.perf_counter()
            found, drawn = pose.frame_people(scene, camera, people, width, height, passes["z"], passes["index"])
            png.write_png(out / "p.png", draw.draw_people(height, width, drawn))
            t5 = time.perf_counter()
            for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                times[key].append(dt * 1000.0)
    result = {k: float(np.median(v)) for k, v in times.items()}
    result["total"] = sum(result.values())
    # And end to end through the public entry point (state hash, atomic folder, meta.json included).
    shot = types.SimpleNamespace(name="Bench", camera=camera, frame_start=frames[0], frame_end=frames[-1])
    t0 = time.perf_counter()
    cond.render_shot(scene, shot, out / "conditioning", width=width, height=height, force=True)
    result["render_shot"] = (time.perf_counter() - t0) * 1000.0 / len(frames)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24, help="frames per size (from frame 1: the dolly shot)")
    args = parser.parse_args()
    scene = demo_scene()
    frames = list(range(1, 1 + args.frames))
    print(f"demo scene, frames {frames[0]}–{frames[-1]}, {os.cpu_count()} CPU cores, Blender {bpy.app.version_string}")
    print(f"{'size':>10} " + " ".join(f"{k:>8}" for k in ("render", "depth", "flow", "masks", "pose", "total")) + "  render_shot (ms/frame)")
    for width, height in ((512, 288), (1024, 576)):
        with tempfile.TemporaryDirectory() as tmp:
            r = bench(scene, width, height, frames, Path(tmp))
        cells = " ".join(f"{r[k]:8.1f}" for k in ("render", "depth", "flow", "masks", "pose", "total"))
        print(f"{width}x{height:<5} {cells}  {r['render_shot']:8.1f}")


if __name__ == "__main__":
    main()
