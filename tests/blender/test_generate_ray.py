"""Generate All in real Blender against the engine on Ray Serve (two CPU replicas, tiny models):
every shot's job is submitted up front, every take lands on the VSE.

The add-on is pointed at the Ray engine the way a user points it at a cluster: a URL and a
token (here through VIEWFINDER_ENGINE_URL / VIEWFINDER_ENGINE_TOKEN). One Ray cluster for the
session, stopped with its local cluster at its end.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import bpy
import pytest
from blender_scenes import engine_python
from ray_engine import RayEngine, ray_missing_reason

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_generate import build_film, take_strips  # noqa: E402

pytestmark = [pytest.mark.engine]


@pytest.fixture(scope="session")
def ray_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayEngine]:
    python = engine_python()
    reason = ray_missing_reason(python) if python else "no engine environment: run `make test`"
    if reason:
        pytest.skip(reason)
    engine = RayEngine(python, tmp_path_factory.mktemp("ray-engine"), replicas=2).start()
    yield engine
    engine.stop()


@pytest.fixture()
def on_ray(ray_engine: RayEngine, monkeypatch: pytest.MonkeyPatch, vfmod) -> RayEngine:
    vfmod("core.client.process").shutdown_engine()  # no local engine child: the cluster answers
    monkeypatch.setenv("VIEWFINDER_ENGINE_URL", ray_engine.url)
    monkeypatch.setenv("VIEWFINDER_ENGINE_TOKEN", ray_engine.token)
    return ray_engine


def test_generate_all_on_ray_places_every_take(tmp_path, tiny_models, on_ray) -> None:
    scene = build_film(tmp_path, tiny_models)
    scene.viewfinder.batch_size = 1  # frames arrive one by one: shots visibly interleave
    # Enough work per frame that each job outlasts the add-on's 0.2 s polling: with two-step
    # frames, jobs of ~0.3 s could finish between polls and look sequential (seen once on 4.2).
    scene.viewfinder.steps = 12
    assert bpy.ops.viewfinder.generate(shot="") == {"FINISHED"}
    takes = take_strips(scene)
    assert [(s.name, s.frame_final_start, s.frame_final_end - 1) for s in takes] == [
        ("Wide take 001", 1, 3), ("Close take 001", 4, 6), ("Reverse take 001", 7, 9)]
    spans = []
    for strip in takes:
        folder = Path(bpy.path.abspath(strip["viewfinder_take"]))
        info = json.loads((folder / "take.json").read_text())
        assert info["complete"] and info["engine"] == on_ray.url
        frames = sorted(folder.glob("*.png"))
        assert [p.name for p in frames] == [f"{f:04d}.png" for f in info["frames_total"]]
        times = [p.stat().st_mtime for p in frames]
        spans.append((min(times), max(times)))
    # Jobs went to the engine together: some shot's first frame arrived before another's last.
    # (One after the other, every shot would start after the previous one ended.)
    ordered = sorted(spans)
    assert any(later[0] < earlier[1] for earlier, later in zip(ordered, ordered[1:])), (spans, on_ray.log_tail())

    # Again: unchanged shots come straight from the take cache, still three strips.
    assert bpy.ops.viewfinder.generate(shot="") == {"FINISHED"}
    assert len(take_strips(scene)) == 3
