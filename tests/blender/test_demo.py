"""`make demo`'s runner end to end (quick mode: four steps, the same pipeline), with the toy-world models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import bpy
import numpy as np
import pytest
from blender_scenes import engine_python, needs_engine

ROOT = Path(__file__).resolve().parents[2]
ENGINE_PYTHON = engine_python()

pytestmark = [
    *needs_engine(),
    pytest.mark.skipif(bpy.app.version < (5, 0, 0), reason="make demo runs on Blender 5.0 (.venv)"),
]


def test_demo_writes_film_storyboard_and_animatic(tmp_path, vf, vfmod):
    out = tmp_path / "out"
    env = dict(os.environ, VIEWFINDER_DEMO_OUT=str(out), VIEWFINDER_DEMO_QUICK="1", HF_HUB_OFFLINE="1",
               VIEWFINDER_ENGINE_PYTHON=ENGINE_PYTHON)
    env.pop("VIEWFINDER_ENGINE_URL", None)
    result = subprocess.run([sys.executable, str(ROOT / "demo" / "run_demo.py")], env=env, capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "using the toy-world models" in result.stdout  # the default: says plainly which models drew the frames
    for name in ("film.blend", "storyboard.png", "animatic.mp4"):
        assert (out / name).is_file(), name
        assert str(out / name) in result.stdout

    # The animatic has one frame per timeline frame (the demo film is frames 1-72).
    clip = bpy.data.movieclips.load(str(out / "animatic.mp4"))
    assert clip.frame_duration == 72

    # The storyboard shows a row of thumbnails per shot, and a row of control maps under the shots that
    # have normal, line-art or seg maps (Pan: seg, Orbit: normal + line art).
    image = bpy.data.images.load(str(out / "storyboard.png"))
    width, height = image.size
    pixels = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    # The second thumbnail column, top row first (the first holds depth maps, whose far ground is as dark as
    # the sheet).
    column = pixels.reshape(height, width, 4)[::-1, 410:740, :3]
    background = column[2, 0]
    filled = (np.abs(column - background).max(axis=2) > 0.02).mean(axis=1) > 0.5
    edges = np.flatnonzero(np.diff(np.concatenate([[0], filled.astype(np.int8), [0]])))
    runs = [end - start for start, end in zip(edges[::2], edges[1::2])]
    assert len([r for r in runs if r >= 20]) == 5, runs  # thumbnails, not the title's text

    # Two characters from the bible: both in the Pan shot's take (and so its storyboard caption), the
    # traveller with a reference image rendered locally.
    assert (out / "traveller-reference.png").is_file()
    bpy.ops.wm.open_mainfile(filepath=str(out / "film.blend"))
    scene = bpy.context.scene
    bible = {c.name: c for c in scene.viewfinder.characters}
    assert sorted(bible) == ["Stranger", "Traveller"]
    assert (bible["Traveller"].description, bible["Stranger"].description) == ("a red person", "a green person")
    assert [Path(bpy.path.abspath(r.image.filepath)).name for r in bible["Traveller"].references] == [
        "traveller-reference.png"]
    project = vfmod("operators.common").project_of(bpy.context)
    rows = {row.shot: row for row in vfmod("core.timeline.exports").storyboard_rows(scene, project)}
    assert sorted(rows["Pan"].characters) == ["Stranger", "Traveller"]
    take = json.loads((rows["Pan"].images[0].parent / "take.json").read_text())
    assert sorted(c["name"] for c in take["settings"]["characters"]) == ["Stranger", "Traveller"]
    (traveller,) = [c for c in take["settings"]["characters"] if c["name"] == "Traveller"]
    # The toy world has no IP-Adapter: the reference stays in the bible and is not sent.
    assert traveller["references"] == []
    # The exact maps: rendered for the storyboard, not sent to toy models that have no net for them.
    assert [label for label, _ in rows["Orbit"].maps] == ["depth", "normal", "line art"]
    assert [label for label, _ in rows["Pan"].maps] == ["depth", "segmentation"] and not rows["Dolly"].maps
    assert all(image.is_file() for row in rows.values() for _, image in row.maps)
    orbit = json.loads((rows["Orbit"].images[0].parent / "take.json").read_text())
    assert "normal_weight" not in orbit["settings"] and "controlnet_normal" not in orbit["models"]
    assert "rendered and shown, not sent" in result.stdout
