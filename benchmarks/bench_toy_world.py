"""What the frames show, on toy-world scenes and camera moves never seen in training.

    .venv-engine/bin/python benchmarks/bench_toy_world.py [--models DIR] [--data DIR] [--steps 20] [--only NAME]

1. Data: held-out splits of the toy world (``toyworld/generate.py``, run in Blender's Python when
   missing): ``heldout`` stills, ``cast`` (two mannequins a shot) and ``moves`` (48-frame camera
   moves, a checkered thing in each). Their layouts use seeds no training shot uses.
2. Models: the committed toy-world models (``python -m engine make-toy-models``) unless
   ``--models`` names a folder with sd15, controlnet-depth and controlnet-pose.
3. Generation: the engine's own ``JobManager`` in this process (the code an HTTP job runs), the
   exact depth, pose and masks of each frame, the frame's caption as the prompt.
4. Measures (engine/testing/toy/measure.py), each beside the same measure on the real renders
   (what a perfect model would score with this measure) and a control that must fail:
   - blocking: IoU of each thing's drawn silhouette (foreground against the frame's own
     ground and sky colours) with its exact mask; the same with the ControlNets' weights at 0;
   - colour: a thing's mean colour nearest its prompted colour (palette: the renders' own
     mean colour per name);
   - bible: two mannequins bound as characters A "a red person" and B "a blue person"; each
     takes its own colour, the other's colour covers < 10 % of its mask; changing A's
     description changes A's pixels >= 5x the pixels outside A; beside it the same two
     phrases in one global prompt without the bible;
   - same character: one character in three shots with different cameras: its colour and its
     pattern class agree;
   - coherence: FLOW's warp error against INDEPENDENT's over 48-frame moves, and the checkered
     thing's high-frequency energy, last quarter over the keyframe (0.9-1.1: neither blurred
     nor sharpened into grain).
Not a test: it prints a table (and writes benchmarks/out/toy-world/table.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models on a small CPU: OpenMP spinning costs 10x

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BLENDER_PYTHON = ROOT / ".venv" / "bin" / "python"
SPLITS = {"heldout": (60, 4), "cast": (12, 3), "moves": (5, 48)}  # shots, frames per shot
# A thing is judged for its silhouette only where the measure finds it in the real render with at
# least this IoU (61-75 % of the separable things on 12-30 held-out shots; with every thing kept the
# renders' own mean was 0.84, so an unreachable goal measured the measure, not the model).
MEASURABLE = 0.75

from engine.testing.toy import measure  # noqa: E402
from engine.testing.toy.run import ToyEngine, read  # noqa: E402
from engine.testing.toy.vocab import COLOURS, CONFUSABLE_WITH_GROUND, CONFUSABLE_WITH_SKY  # noqa: E402


def ensure_data(data: Path) -> None:
    for split, (shots, frames) in SPLITS.items():
        if not (data / f"{split}.jsonl").is_file():
            subprocess.run([str(BLENDER_PYTHON), str(ROOT / "toyworld" / "generate.py"), "--out", str(data),
                            "--split", split, "--shots", str(shots), "--frames", str(frames)], check=True,
                           stdout=subprocess.DEVNULL)


def records(data: Path, split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines()]


def frame_of(engine: ToyEngine, data: Path, r: dict[str, Any], *, flow: bool = False,
             mask: bool = False) -> dict[str, Any]:
    """A request frame from a dataset record: its exact depth and pose (and flow, masks when asked)."""
    cond = data / Path(r["depth"]).parent.parent
    return engine.frame(r["frame"], data / r["depth"], data / r["pose"] if r["pose"] else None,
                        cond / "flow" / f"{r['frame']:04d}.npy" if flow else None,
                        data / r["mask"] if mask else None)


def palette(data: Path, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Each colour name's mean colour in the renders (plain things, inside their masks)."""
    sums: dict[str, list[np.ndarray]] = defaultdict(list)
    for r in rows:
        image, mask = read(data / r["rgb"]), read(data / r["mask"])
        for t in r["things"]:
            colour = measure.mean_colour(image, mask == t["id"])
            if colour is not None:
                sums[t["colour"]].append(colour)
    return {name: np.mean(sums[name], axis=0) for name in COLOURS if sums[name]}


def separable(r: dict[str, Any], t: dict[str, Any]) -> bool:
    """A thing whose colour is not its background's (a green cube on grass has no silhouette by colour)."""
    return t["colour"] not in CONFUSABLE_WITH_GROUND[r["ground"]] | CONFUSABLE_WITH_SKY[r["sky"]]


def by_shot(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    shots: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        shots[r["shot"]].append(r)
    return {s: sorted(v, key=lambda r: r["frame"]) for s, v in sorted(shots.items())}


def shot_caption(rows: list[dict[str, Any]]) -> str:
    """One prompt for a shot's stills: every thing seen in any of its frames."""
    from engine.testing.toy.vocab import Thing, caption

    seen: dict[int, dict[str, Any]] = {}
    for r in rows:
        for t in r["things"]:
            seen.setdefault(t["id"], t)
    things = [Thing(t["colour"], t["pattern"], t["shape"]) for _, t in sorted(seen.items())]
    return caption(things, rows[0]["ground"], rows[0]["sky"])


def blocking_and_colour(engine: ToyEngine, data: Path, pal: dict[str, np.ndarray], shots: int) -> dict[str, Any]:
    scores: dict[str, list[float]] = defaultdict(list)
    for s, rows in list(by_shot(records(data, "heldout")).items())[:shots]:
        frames = [frame_of(engine, data, r) for r in rows]
        prompt = shot_caption(rows)
        drawn = engine.run(frames, prompt, 1000 + s)
        blind = engine.run(frames, prompt, 1000 + s, depth_weight=0.0, pose_weight=0.0)
        for r in rows:
            depth, mask, truth = read(data / r["depth"]), read(data / r["mask"]), read(data / r["rgb"])
            keep = [t for t in r["things"] if separable(r, t) and t["pixels"] >= 20]
            # The measure's own reach: a thing it cannot find in the real render (a thin mannequin, a
            # dark thing at night, shading near the ground's colour) is not judged in the model's frame.
            every = [t["id"] for t in r["things"]]
            found = measure.foreground(truth, depth, mask, every)
            on_render = measure.object_ious(found, mask, [t["id"] for t in keep])
            seen = [i for i, v in on_render.items() if v == v and v >= MEASURABLE]
            scores["measurable"] += [float(i in seen) for i, v in on_render.items() if v == v]
            for name, image in (("model", drawn[r["frame"]]), ("weight0", blind[r["frame"]]), ("renders", truth)):
                fg = found if image is truth else measure.foreground(image, depth, mask, every)
                ious = measure.object_ious(fg, mask, seen)
                scores[f"iou_{name}"] += [v for v in ious.values() if v == v]
                scores[f"iou_median_{name}"] += [v for v in ious.values() if v == v]
                for t in r["things"]:
                    colour = measure.mean_colour(image, mask == t["id"])
                    if colour is not None and t["pixels"] >= 20:
                        scores[f"colour_{name}"].append(float(measure.nearest(colour, pal) == t["colour"]))
    return {key: (float(np.median(v) if "median" in key else np.mean(v)), len(v)) for key, v in scores.items()}


def bible(engine: ToyEngine, data: Path, pal: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, list[float]] = defaultdict(list)
    for s, rows in by_shot(records(data, "cast")).items():
        a_id, b_id = cast_ids(data, rows)
        frames = [frame_of(engine, data, r, mask=True) for r in rows]
        scene = f"on {rows[0]['ground']} under a {rows[0]['sky']} sky"
        prompt = f"a person and a person {scene}"

        def cast(desc_a: str, desc_b: str, a_id: int = a_id, b_id: int = b_id) -> dict[str, Any]:
            return {"characters": [{"name": "A", "description": desc_a, "mask_ids": [a_id]},
                                   {"name": "B", "description": desc_b, "mask_ids": [b_id]}]}

        with_bible = engine.run(frames, prompt, 2000 + s, **cast("a red person", "a blue person"))
        changed = engine.run(frames, prompt, 2000 + s, **cast("a green person", "a blue person"))
        without = engine.run(frames, f"a red person and a blue person {scene}", 2000 + s)
        for r in rows:
            mask = read(data / r["mask"])
            ra, rb = mask == a_id, mask == b_id
            if min(ra.sum(), rb.sum()) < 30:
                continue
            n = r["frame"]
            for name, image in (("bible", with_bible[n]), ("global", without[n])):
                ba, bb = measure.bleed(image, ra, "red", "blue", pal), measure.bleed(image, rb, "blue", "red", pal)
                out[f"own_{name}"] += [float(ba.own), float(bb.own)]
                out[f"other_{name}"] += [ba.other_fraction, bb.other_fraction]
            diff = np.abs(changed[n].astype(float) - with_bible[n].astype(float)).mean(-1)
            inside, outside = diff[measure.erode(ra, 1)].mean(), diff[~measure.dilate(ra, 2)].mean()
            out["concentration"].append(float(inside / max(outside, 1e-6)))
    summary = {key: (float(np.mean(v)), len(v)) for key, v in out.items() if key != "concentration"}
    summary["concentration"] = (float(np.median(out["concentration"])), len(out["concentration"]))
    return summary


def cast_ids(data: Path, rows: list[dict[str, Any]]) -> tuple[int, int]:
    """The mask ids of a cast shot's two mannequins (Thing.0, Thing.1), from its legend."""
    meta = json.loads((data / Path(rows[0]["mask"]).parent.parent / "meta.json").read_text())
    ids = {entry["name"]: int(key) for key, entry in meta["masks"]["legend"].items()}
    return ids["Thing.0.person"], ids["Thing.1.person"]


def same_character(engine: ToyEngine, data: Path, pal: dict[str, np.ndarray]) -> dict[str, Any]:
    """One character, "a yellow checkered person", in three shots (three cameras of one layout)."""
    agree_colour, agree_pattern, spreads = [], [], []
    for s, rows in by_shot(records(data, "cast")).items():
        frames = [frame_of(engine, data, r, mask=True) for r in rows]
        a_id, _ = cast_ids(data, rows)
        images = engine.run(frames, f"a person and a person on {rows[0]['ground']} under a {rows[0]['sky']} sky",
                            3000 + s, characters=[{"name": "A", "description": "a yellow checkered person",
                                                   "mask_ids": [a_id]}])
        looks = []
        for r in rows:
            region = read(data / r["mask"]) == a_id
            if region.sum() >= 40:
                looks.append((measure.mean_colour(images[r["frame"]], region),
                              measure.region_hf_energy(images[r["frame"]], region)))
        if len(looks) == 3:
            names = [measure.nearest(c, pal) for c, _ in looks]
            agree_colour.append(float(len(set(names)) == 1 and names[0] == "yellow"))
            energies = np.array([e for _, e in looks])
            spreads.append(float(energies.max() / max(energies.min(), 1e-6)))
            agree_pattern.append(float(spreads[-1] < 2.0))
    return {"colour_agrees": (float(np.mean(agree_colour)) if agree_colour else float("nan"), len(agree_colour)),
            "pattern_agrees": (float(np.mean(agree_pattern)) if agree_pattern else float("nan"), len(agree_pattern)),
            "hf_spread": (float(np.median(spreads)) if spreads else float("nan"), len(spreads))}


def coherence(engine: ToyEngine, data: Path, out: Path, moves: int) -> dict[str, Any]:
    from engine.metrics.take import measure_take

    result: dict[str, list[float]] = defaultdict(list)
    for s, rows in list(by_shot(records(data, "moves")).items())[:moves]:
        cond = data / Path(rows[0]["depth"]).parent.parent
        meta = json.loads((cond / "meta.json").read_text())
        checker = next(t for t in rows[0]["things"] if t["pattern"] == "checkered") if rows[0]["things"] else None
        for mode in ("INDEPENDENT", "FLOW"):
            spec = {"mode": mode} if mode == "INDEPENDENT" else {
                "mode": "FLOW", "strength": 0.55, "keyframe_interval": 0, "depth_range": [meta["near"], meta["far"]]}
            frames = [frame_of(engine, data, r, flow=mode == "FLOW") for r in rows]
            images = engine.run(frames, rows[0]["caption"], 4000 + s, coherence=spec)
            take = out / "takes" / mode / f"{s:04d}"
            take_dir = take / "takes" / "001"
            shutil.rmtree(take_dir, ignore_errors=True)
            take_dir.mkdir(parents=True)
            if not (take / "conditioning").exists():
                (take / "conditioning").symlink_to(cond)
            from PIL import Image

            for n, image in images.items():
                Image.fromarray(image).save(take_dir / f"{n:04d}.png")
            (take_dir / "take.json").write_text(json.dumps({"shot": str(s), "take": "001", "keyframes": [],
                                                            "settings": {"coherence": spec}}))
            metrics = measure_take(take_dir)
            result[f"warp_{mode}"].append(metrics.warp_error)
            if checker is not None:
                energies = []
                for r in rows:
                    mask = read(data / r["mask"])
                    energies.append(measure.region_hf_energy(images[r["frame"]], mask == checker["id"]))
                tail = [e for e in energies[-len(energies) // 4:] if e == e]
                if tail and energies[0] == energies[0] and energies[0] > 0:
                    result[f"hf_{mode}"].append(float(np.mean(tail) / energies[0]))
    return {key: (float(np.mean(v)), len(v)) for key, v in result.items()}


def table(results: dict[str, dict[str, Any]], settings: str) -> str:
    def f(section: str, key: str, fmt: str = "{:.3f}") -> str:
        value = results.get(section, {}).get(key)
        return "n/a" if value is None else fmt.format(value[0]) + f" (n={value[1]})"

    b, c, s, h = "blocking", "bible", "same", "coherence"
    warp = results.get(h, {})
    ratio = (warp["warp_FLOW"][0] / warp["warp_INDEPENDENT"][0]) if "warp_FLOW" in warp else float("nan")
    lines = [f"Settings: {settings}", "",
             "| measure | model | control (must fail) | real renders | goal |", "|---|---:|---:|---:|---|",
             f"| blocking: silhouette IoU with the exact mask | {f(b, 'iou_model')} | {f(b, 'iou_weight0')} "
             f"(ControlNet weights 0) | {f(b, 'iou_renders')} | >= 0.85 |",
             f"| blocking: the same, median | {f(b, 'iou_median_model')} | {f(b, 'iou_median_weight0')} "
             f"| {f(b, 'iou_median_renders')} | |",
             f"| blocking: things the measure finds in the render (IoU >= {MEASURABLE}), share | "
             f"{f(b, 'measurable')} | | | |",
             f"| colour: nearest to the prompted colour | {f(b, 'colour_model')} | {f(b, 'colour_weight0')} "
             f"(weights 0) | {f(b, 'colour_renders')} | >= 0.90 |",
             f"| bible: each character its own colour | {f(c, 'own_bible')} | {f(c, 'own_global')} "
             "(one global prompt) | | >= 0.90 |",
             f"| bible: the other's colour in a mask | {f(c, 'other_bible')} | {f(c, 'other_global')} "
             "(one global prompt) | | < 0.10 |",
             f"| bible: A's pixels changed over the rest, A's description changed (median) | "
             f"{f(c, 'concentration', '{:.1f}x')} | | | >= 5x |",
             f"| same character in 3 shots: colour agrees | {f(s, 'colour_agrees')} | | | all |",
             f"| same character in 3 shots: pattern agrees (HF energy within 2x) | {f(s, 'pattern_agrees')} "
             f"| | | all |",
             f"| coherence: warp error /255, FLOW | {f(h, 'warp_FLOW', '{:.2f}')} | "
             f"{f(h, 'warp_INDEPENDENT', '{:.2f}')} (INDEPENDENT) | | FLOW <= 0.5x INDEPENDENT: {ratio:.2f}x |",
             f"| coherence: checkers' HF energy, last quarter / keyframe, FLOW | {f(h, 'hf_FLOW', '{:.2f}')} | "
             f"{f(h, 'hf_INDEPENDENT', '{:.2f}')} (INDEPENDENT) | | 0.9-1.1 |"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "toy-world")
    parser.add_argument("--data", type=Path, default=None, help="toy-world data (default: OUT/data, generated)")
    parser.add_argument("--models", type=Path, default=None, help="folder with sd15, controlnet-depth, controlnet-pose")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--shots", type=int, default=30, help="held-out still shots for blocking and colour")
    parser.add_argument("--moves", type=int, default=3, help="48-frame camera moves for coherence")
    parser.add_argument("--only", action="append", choices=["blocking", "bible", "same", "coherence"])
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = (args.data or out / "data").resolve()
    ensure_data(data)
    models = args.models
    if models is None:
        models = out / "toy-models"
        subprocess.run([sys.executable, "-m", "engine", "make-toy-models", str(models)], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
    pal = palette(data, records(data, "heldout"))
    engine = ToyEngine(out / "engine-data", models.resolve(), args.steps)
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    try:
        for name, fn in (("blocking", lambda: blocking_and_colour(engine, data, pal, args.shots)),
                         ("bible", lambda: bible(engine, data, pal)),
                         ("same", lambda: same_character(engine, data, pal)),
                         ("coherence", lambda: coherence(engine, data, out, args.moves))):
            if args.only and name not in args.only:
                continue
            results[name] = fn()
            print(f"[bench] {name}: {json.dumps(results[name])} ({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        engine.stop()
    settings = (f"toy world, held-out scenes and moves, 64x64, {args.steps} steps, guidance 5, models {models}, "
                f"{engine.jobs} jobs in {engine.seconds:.0f} s")
    text = table(results, settings)
    print(text)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
