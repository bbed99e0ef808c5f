"""The toy world's dataset generator in real Blender: files, captions and masks that agree.

Runs `toyworld/generate.py` as `make toy-data` does (a child process of this Python), two tiny
splits: stills and the two-mannequin cast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bpy")
from helpers import load  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from engine.testing.toy.vocab import Thing, caption  # noqa: E402


def generate(out: Path, split: str, shots: int, frames: int) -> list[dict]:
    result = subprocess.run([sys.executable, str(ROOT / "toyworld" / "generate.py"), "--out", str(out), "--split",
                             split, "--shots", str(shots), "--frames", str(frames)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


def test_stills_have_maps_renders_and_captions_that_match_their_masks(tmp_path: Path) -> None:
    png = load("core.conditioning.png")
    rows = generate(tmp_path, "train", 2, 2)
    assert [(r["shot"], r["frame"]) for r in rows] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for r in rows:
        for key in ("rgb", "depth", "mask"):
            assert (tmp_path / r[key]).is_file(), r[key]
        depth, mask = png.read_png(tmp_path / r["depth"]), png.read_png(tmp_path / r["mask"])
        assert depth.shape == mask.shape == (64, 64) and depth.dtype == np.uint16
        # The caption is the grammar's, from the things the frame shows, each with its own mask id.
        things = [Thing(t["colour"], t["pattern"], t["shape"]) for t in r["things"]]
        assert r["caption"] == caption(things, r["ground"], r["sky"])
        for t in r["things"]:
            assert int((mask == t["id"]).sum()) == t["pixels"] >= 6
            assert depth[mask == t["id"]].min() > 0  # geometry: depth 1..65535, 0 is the sky
        # A pose drawing only where a mannequin is in view.
        if r["pose"] is not None:
            assert any(t["shape"] == "person" for t in r["things"]), r
    meta = json.loads((tmp_path / "train" / "0000" / "conditioning" / "meta.json").read_text())
    assert meta["complete"] is True and meta["width"] == meta["height"] == 64


def test_cast_shots_hold_two_mannequins_with_pose_maps(tmp_path: Path) -> None:
    rows = generate(tmp_path, "cast", 1, 2)
    meta = json.loads((tmp_path / "cast" / "0000" / "conditioning" / "meta.json").read_text())
    names = sorted(entry["name"] for entry in meta["masks"]["legend"].values())
    assert names == ["Ground", "Thing.0.person", "Thing.1.person"]
    assert sorted(meta["people"]) == ["Thing.0.person", "Thing.1.person"]
    assert any(r["pose"] for r in rows)
