"""The toy world's dataset: random scenes rendered by Blender with Viewfinder's own control maps.

    .venv/bin/python toyworld/generate.py --out DIR [--shots 600] [--frames 8] [--size 64] [--seed 0]
        [--split train|heldout|moves] [--workers 2]

Each shot is one random layout (1-3 things: shapes and mannequins, colours, patterns) on a
ground under a sky. `train` and `heldout` shots are stills: the camera jumps to a new random
view every frame (and mannequins take a new pose), so one render call gives `--frames`
images. `moves` shots are smooth camera moves (orbit, dolly, pan, crane, truck) for the
coherence checks, the first thing checkered. `cast` shots hold two mannequins, for the
character bible's checks. Held-out splits use seeds no training shot uses.

Per shot, under DIR/<split>/SSSS/:
    conditioning/            exactly what Generate sends: core.conditioning.render_shot's depth/,
                             pose/, masks/, flow/ and meta.json
    rgb/NNNN.png             the Workbench colour render (8-bit sRGB)
and one line per frame in DIR/<split>.jsonl: the caption, the ground and sky, and each visible
thing's phrase, colour, pattern, shape, mask id and pixel count.

Runs Blender (bpy) in this process; `--workers N` splits the shots over N processes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Seeds far apart per split, so a held-out shot never repeats a training layout.
SPLIT_SEEDS = {"train": 0, "heldout": 1_000_003, "moves": 2_000_003, "cast": 3_000_003}
MIN_PIXELS = 6  # a thing smaller than this in a frame is not named in its caption


def _source_package() -> None:
    """The repository root as the package `viewfinder_src` (as tests/helpers.py does), engine importable."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if "viewfinder_src" not in sys.modules:
        spec = importlib.util.spec_from_file_location("viewfinder_src", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["viewfinder_src"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]


def _demo_character() -> Any:
    spec = importlib.util.spec_from_file_location("viewfinder_demo_scene", ROOT / "demo" / "scene.py")
    demo = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(demo)  # type: ignore[union-attr]
    return demo.build_character


def random_things(rng: random.Random, count: int) -> list[Any]:
    from engine.testing.toy.vocab import COLOURS, PATTERNS, SHAPES, Thing

    things = []
    for _ in range(count):
        shape = "person" if rng.random() < 0.3 else rng.choice([s for s in SHAPES if s != "person"])
        things.append(Thing(rng.choice(list(COLOURS)), rng.choice(PATTERNS), shape))
    return things


def _layout(scene: Any, rng: random.Random, split: str, index: int, frames: int) -> tuple[Any, ...]:
    """Ground, sky, things and camera of one shot: (placed, ground, sky, camera, move)."""
    from engine.testing.toy.vocab import GROUNDS, SKIES, Thing
    from toyworld import scene as toy_scene

    ground, sky = rng.choice(list(GROUNDS)), rng.choice(list(SKIES))
    if split == "cast":  # two mannequins: the character bible's checks (their looks come from the bible)
        things = [Thing("white", "plain", "person"), Thing("white", "plain", "person")]
    else:
        things = random_things(rng, rng.choice((1, 1, 2, 2, 3)))
    if split == "moves":  # the first thing is checkered: the sharpness guard needs real detail
        things[0] = Thing(things[0].colour, "checkered", things[0].shape)
    placed = toy_scene.build(scene, rng, things, ground, sky, _demo_character())
    move = None
    if split == "moves":
        move = toy_scene.MOVES[index % len(toy_scene.MOVES)]
        camera = toy_scene.moving_camera(scene, rng, placed, frames, move)
    else:
        camera = toy_scene.still_cameras(scene, rng, placed, frames)
    return placed, ground, sky, camera, move


def _colour_render_settings(scene: Any, size: int) -> None:
    """Workbench, studio light, texture colours, the sky's world colour behind."""
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.view_settings.view_transform = "Standard"
    shading = scene.display.shading
    shading.light, shading.color_type, shading.background_type = "STUDIO", "TEXTURE", "WORLD"


def _visible(legend: dict[str, Any], counts: Any, by_name: dict[str, Any]) -> list[dict[str, Any]]:
    """The things a frame shows (at least MIN_PIXELS of their mask), each with its phrase and mask id."""
    visible = []
    for key, entry in legend.items():
        p = by_name.get(entry["name"])
        if p is None or counts[int(key)] < MIN_PIXELS:
            continue
        visible.append({"id": int(key), "name": entry["name"], "phrase": p.thing.phrase, "colour": p.thing.colour,
                        "pattern": p.thing.pattern, "shape": p.thing.shape, "pixels": int(counts[int(key)])})
    return visible


def render_shot(out: Path, split: str, index: int, frames: int, size: int, seed: int) -> list[dict[str, Any]]:
    """Build, render and describe one shot; returns its frame records."""
    import bpy
    import numpy as np

    from engine.testing.toy.vocab import Thing, caption

    conditioning = __import__("viewfinder_src.core.conditioning", fromlist=["render_shot"])
    png = __import__("viewfinder_src.core.conditioning.png", fromlist=["read_png"])

    # 1. The layout, from the shot's own seed.
    rng = random.Random(SPLIT_SEEDS[split] + seed * 7919 + index)
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps = 24
    placed, ground, sky, camera, move = _layout(scene, rng, split, index, frames)
    scene.frame_start, scene.frame_end = 1, frames
    # 2. The control maps, by Generate's own code.
    shot_dir = out / split / f"{index:04d}"
    shot = SimpleNamespace(name=f"{split}-{index:04d}", camera=camera, frame_start=1, frame_end=frames)
    result = conditioning.render_shot(scene, shot, shot_dir / "conditioning", width=size, height=size, force=True)
    # 3. The colour renders and each frame's record.
    _colour_render_settings(scene, size)
    (shot_dir / "rgb").mkdir(parents=True, exist_ok=True)
    legend = result.meta["masks"]["legend"]
    by_name = {p.owner.name: p for p in placed}
    records = []
    for frame in result.frames:
        scene.frame_set(frame)
        scene.render.filepath = str(shot_dir / "rgb" / f"{frame:04d}.png")
        bpy.ops.render.render(write_still=True)
        ids = png.read_png(shot_dir / "conditioning" / "masks" / f"{frame:04d}.png")
        visible = _visible(legend, np.bincount(ids.ravel(), minlength=max(map(int, legend), default=0) + 1), by_name)
        rng.shuffle(visible)
        maps = result.maps[frame]
        records.append({
            "split": split, "shot": index, "frame": frame, "move": move, "ground": ground, "sky": sky,
            "caption": caption([Thing(v["colour"], v["pattern"], v["shape"]) for v in visible], ground, sky),
            "things": visible,
            "rgb": f"{split}/{index:04d}/rgb/{frame:04d}.png",
            "depth": str(Path(maps["depth"]).relative_to(out)),
            "pose": str(Path(maps["pose"]).relative_to(out)) if maps.get("pose") else None,
            "mask": f"{split}/{index:04d}/conditioning/masks/{frame:04d}.png",
        })
    return records


def run(out: Path, split: str, shots: range, frames: int, size: int, seed: int) -> None:
    _source_package()
    lines = []
    t0 = time.perf_counter()
    for n, index in enumerate(shots):
        lines += render_shot(out, split, index, frames, size, seed)
        if (n + 1) % 20 == 0:
            print(f"[toyworld] {split}: {n + 1}/{len(shots)} shots, {time.perf_counter() - t0:.0f}s", flush=True)
    part = out / f".{split}.{shots.start:05d}.jsonl"
    part.write_text("".join(json.dumps(r) + "\n" for r in lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", choices=sorted(SPLIT_SEEDS), default="train")
    parser.add_argument("--shots", type=int, default=600)
    parser.add_argument("--first", type=int, default=0, help="index of the first shot (workers use it)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--part", action="store_true", help=argparse.SUPPRESS)  # a worker: no merging
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.workers > 1:
        per = -(-args.shots // args.workers)
        procs = []
        for w in range(args.workers):
            first = args.first + w * per
            count = min(per, args.first + args.shots - first)
            if count <= 0:
                continue
            cmd = [sys.executable, __file__, "--out", str(out), "--split", args.split, "--shots", str(count),
                   "--first", str(first), "--frames", str(args.frames), "--size", str(args.size),
                   "--seed", str(args.seed), "--part"]
            procs.append(subprocess.Popen(cmd))
        if any(p.wait() for p in procs):
            print("[toyworld] a worker failed", file=sys.stderr)
            return 1
    else:
        home = tempfile.mkdtemp(prefix="toyworld-home-")
        os.environ["HOME"] = home  # Blender's user folder: a throwaway one
        run(out, args.split, range(args.first, args.first + args.shots), args.frames, args.size, args.seed)
        if args.part:
            return 0
    parts = sorted(out.glob(f".{args.split}.*.jsonl"))
    (out / f"{args.split}.jsonl").write_text("".join(p.read_text() for p in parts))
    for p in parts:
        p.unlink()
    print(f"[toyworld] {args.split}: {sum(1 for _ in open(out / f'{args.split}.jsonl'))} frames in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
