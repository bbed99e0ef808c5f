"""FLOW coherence end to end in real Blender: control maps -> engine process (tiny models) -> take.

The take is then measured with the engine's metric command, as a user would run it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import bpy
from blender_scenes import engine_python, needs_engine, truck_scene

ROOT = Path(__file__).resolve().parents[2]
pytestmark = needs_engine()


def test_flow_take_end_to_end_and_metric(tmp_path: Path, tiny_models: Path) -> None:
    # A truck: parallax, so the cubes uncover the wall behind them.
    scene = truck_scene(tiny_models, size=(128, 72), last_frame=5, shift=1.0, wall=True)
    settings = scene.viewfinder
    settings.long_edge, settings.steps, settings.batch_size = 128, 2, 4  # 128x72: the engine needs >= 64
    shot = settings.shots[0]
    shot.prompt = "boxes in front of a wall"
    shot.coherence = "FLOW"
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "flow.blend"))

    assert bpy.ops.viewfinder.generate(shot="") == {"FINISHED"}
    takes = sorted((tmp_path / "viewfinder" / "Truck" / "takes").glob("*/take.json"))
    assert len(takes) == 1
    info = json.loads(takes[0].read_text())
    assert info["complete"] and info["settings"]["coherence"]["mode"] == "FLOW"
    assert sorted(p.name for p in takes[0].parent.glob("*.png")) == [f"{f:04d}.png" for f in range(1, 6)]

    result = subprocess.run([engine_python(), "-m", "engine", "--log-level", "WARNING", "metrics",
                             str(tmp_path / "viewfinder")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "[FLOW]" in lines[0] and "over 4 pairs" in lines[0], lines
