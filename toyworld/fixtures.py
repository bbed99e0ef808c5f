"""Copy a few held-out toy-world frames into tests/engine/data/toy/ (the toy-world tests' inputs).

    python toyworld/fixtures.py DATA

Deterministic picks, not the model's best frames: held-out still shots 0-2 (every frame), cast
shot 0 (two mannequins) and the first 12 frames of moves shot 0 (a camera move, with its flow).
Each shot keeps its conditioning folder's layout (depth/, pose/, masks/, flow/, meta.json) and
the frame records (caption, things) in records.jsonl; the colour renders come along for the
measures' reference.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PICKS = {"heldout": ([0, 1, 2], None), "cast": ([0], None), "moves": ([0], 12)}


def main(data: Path, out: Path = ROOT / "tests" / "engine" / "data" / "toy") -> None:
    shutil.rmtree(out, ignore_errors=True)
    kept = []
    for split, (shots, first_frames) in PICKS.items():
        for line in (data / f"{split}.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r["shot"] not in shots or (first_frames and r["frame"] > first_frames):
                continue
            kept.append(r)
            paths = [r["rgb"], r["depth"], r["mask"], *([r["pose"]] if r["pose"] else [])]
            cond = Path(r["depth"]).parent.parent
            if split == "moves":
                paths.append(str(cond / "flow" / f"{r['frame']:04d}.npy"))
            paths.append(str(cond / "meta.json"))
            for rel in paths:
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(data / rel, out / rel)
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    print(f"{len(kept)} frames -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
