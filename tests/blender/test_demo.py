"""`make demo`'s runner end to end (quick mode: four steps, the same pipeline): with the toy-world models
(SD 1.5, the default), and on SDXL and Flux.1 with the tiny random-weight models (issue 24)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def run_demo(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``make demo`` in quick mode into ``out``, offline, on a local engine child."""
    environ = dict(os.environ, VIEWFINDER_DEMO_OUT=str(out), VIEWFINDER_DEMO_QUICK="1", HF_HUB_OFFLINE="1",
                   VIEWFINDER_ENGINE_PYTHON=ENGINE_PYTHON, **env)
    environ.pop("VIEWFINDER_ENGINE_URL", None)
    environ.pop("VIEWFINDER_DEMO_FAMILY", None)
    result = subprocess.run([sys.executable, str(ROOT / "demo" / "run_demo.py"), *args], env=environ,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_demo_writes_film_storyboard_and_animatic(tmp_path, vf, vfmod):
    out = tmp_path / "out"
    result = run_demo(out)
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


def takes_of(scene) -> dict[str, Any]:
    editor = scene.sequence_editor
    strips = editor.strips if hasattr(editor, "strips") else editor.sequences
    return {s.name: s for s in strips if s.get("viewfinder_kind") == "take"}


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_the_demo_film_on_each_family(tmp_path, tiny_models, vf, family):
    """``make demo FAMILY=sdxl|flux`` on the tiny models: every shot a take covering its frames, every frame a
    decodable 112 x 64 PNG; SDXL sends the characters, the traveller's reference and every exact map through
    its union ControlNet; Flux.1 sends depth, pose and line art, and says why it leaves the rest unsent."""
    out = tmp_path / "out"
    result = run_demo(out, "--family", family, VIEWFINDER_DEMO_TINY_MODELS=str(tiny_models))
    label = {"sdxl": "SDXL", "flux": "FLUX"}[family]
    assert f"using the tiny random-weight {label} models" in result.stdout
    for name in ("film.blend", "storyboard.png", "animatic.mp4"):
        assert (out / name).is_file(), name
    assert bpy.data.movieclips.load(str(out / "animatic.mp4")).frame_duration == 72

    bpy.ops.wm.open_mainfile(filepath=str(out / "film.blend"))
    scene = bpy.context.scene
    assert scene.viewfinder.model_family == label
    takes = takes_of(scene)
    assert sorted((s.name, s.frame_final_start, s.frame_final_end - 1) for s in takes.values()) == [
        ("Dolly take 001", 1, 24), ("Orbit take 001", 49, 72), ("Pan take 001", 25, 48)]
    info = {}
    for name, strip in takes.items():
        folder = Path(bpy.path.abspath(strip["viewfinder_take"]))
        info[name.split()[0]] = json.loads((folder / "take.json").read_text())
        frames = sorted(folder.glob("*.png"))
        assert len(frames) == 24 and info[name.split()[0]]["complete"]
        for path in frames:
            image = bpy.data.images.load(str(path))
            assert tuple(image.size) == (112, 64), path
            pixels = np.empty(112 * 64 * 4, dtype=np.float32)
            image.pixels.foreach_get(pixels)
            assert pixels.reshape(-1, 4)[:, :3].std() > 0.01, path  # decoded, not an empty image
            bpy.data.images.remove(image)
    models = {shot: take["models"] for shot, take in info.items()}
    assert {m["family"] for m in models.values()} == {family}
    assert all(Path(m["controlnet_union"]).name == f"controlnet-union-{family}" for m in models.values())
    assert not any(k in m for m in models.values() for k in ("controlnet_normal", "controlnet_lineart",
                                                               "controlnet_seg"))
    sent = {shot: sorted(k for k in take["settings"] if k in ("normal_weight", "lineart_weight", "seg_weight"))
            for shot, take in info.items()}
    pan = info["Pan"]["settings"]
    if family == "sdxl":  # the union serves every map; the characters and the reference go as on SD 1.5
        assert sent == {"Dolly": [], "Pan": ["seg_weight"], "Orbit": ["lineart_weight", "normal_weight"]}
        assert sorted(c["name"] for c in pan["characters"]) == ["Stranger", "Traveller"]
        (traveller,) = [c for c in pan["characters"] if c["name"] == "Traveller"]
        assert len(traveller["references"]) == 1
        assert Path(models["Pan"]["ip_adapter"]).parent.name == "ip-adapter-sdxl"
        assert "not used on" not in result.stdout
    else:  # Flux.1: line art only, no characters or references, each left out with the reason
        assert sent == {"Dolly": [], "Pan": [], "Orbit": ["lineart_weight"]}
        assert "characters" not in pan and "ip_adapter" not in models["Pan"]
        for words in ("Shot 'Pan': characters (Traveller, Stranger) are not used on Flux.1: Flux attends to text "
                      "and image tokens jointly",
                      "Shot 'Pan': Segmentation maps: Flux.1's union ControlNet has no seg mode (it takes depth, "
                      "pose, lineart): rendered and shown, not sent",
                      "Shot 'Orbit': Normal maps: Flux.1's union ControlNet has no normal mode"):
            assert words in result.stdout, words
