"""Model families in Blender (issue 24): the Film panel's family block, what a shot sends for each family, and a
two-shot film generated end to end on SDXL and on Flux.1 with tiny models against a real engine process."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import bpy
import pytest
from blender_scenes import add_camera, bind_marker, needs_engine
from cast_scenes import ROOT, collect


def film(tmp_path: Path, models: Path, family: str) -> Any:
    """Two shots of three frames looking at boxes, on the tiny model of ``family`` ("SDXL" or "FLUX")."""
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 160, 120
    scene.frame_start, scene.frame_end = 1, 6
    for x in (-2.0, 0.0, 2.0):
        bpy.ops.mesh.primitive_cube_add(size=1.0, location=(x, 0.0, 0.0))
    for name, frame, x in (("Wide", 1, 0.0), ("Close", 4, 1.0)):
        camera = add_camera(scene, f"Cam{name}", location=(x, -8.0, 0.0))
        camera.keyframe_insert("location", frame=frame)
        camera.location.x += 0.5
        camera.keyframe_insert("location", frame=frame + 2)
        bind_marker(scene, name, frame, camera)
    settings = scene.viewfinder
    settings.model_family = family
    settings.model = str(models / {"SDXL": "sdxl", "FLUX": "flux"}[family])
    settings.controlnet_union = str(models / {"SDXL": "controlnet-union-sdxl", "FLUX": "controlnet-union-flux"}[family])
    settings.long_edge, settings.steps, settings.batch_size = 88, 2, 4
    settings.guidance_scale = 3.5
    for shot in settings.shots:
        shot.prompt = f"a street, {shot.name.lower()} shot"
        shot.coherence = "INDEPENDENT"
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "film.blend"))
    return scene


@pytest.fixture(scope="module")
def schema() -> Any:
    pytest.importorskip("pydantic", reason="the bpy venvs get pydantic from requirements/blender-*.txt")
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module("engine.contract.schema")
    finally:
        sys.path.remove(str(ROOT))


@pytest.mark.parametrize("family, size", [("SDXL", (88, 64)), ("FLUX", (96, 64))])
def test_a_shot_sends_its_family_and_union_net(tmp_path: Path, vfmod: Any, schema: Any, family: str,
                                               size: tuple[int, int]) -> None:
    """SDXL frames are multiples of 8, Flux's of 16 (88 x 66 becomes 88 x 64, and 96 x 64); the engine's model
    parses what is sent."""
    scene = film(tmp_path, tmp_path / "models", family)
    job = collect(scene, vfmod, "Wide")
    models = job.request.to_dict()["models"]
    assert (models["family"], Path(models["controlnet_union"]).name) == (
        family.lower(), {"SDXL": "controlnet-union-sdxl", "FLUX": "controlnet-union-flux"}[family])
    assert (job.request.width, job.request.height) == size
    parsed = schema.JobRequest.model_validate(job.request.body([{"frame": 1}]))
    assert parsed.models.family == family.lower()
    scene.viewfinder.model_family = "SD15"  # an SD 1.5 film sends what it always did
    assert {"family", "controlnet_union"}.isdisjoint(collect(scene, vfmod, "Wide").request.to_dict()["models"])


class Layout:
    """Records what the panel draws: ("prop", name) and ("label", text)."""

    def __init__(self, calls: list[tuple[str, str]] | None = None) -> None:
        self.calls = [] if calls is None else calls

    def prop(self, data: Any, name: str, **_: Any) -> None:
        self.calls.append(("prop", name))

    def label(self, text: str = "", **_: Any) -> None:
        self.calls.append(("label", text))

    def column(self, **_: Any) -> Layout:
        return Layout(self.calls)


def test_the_film_panel_shows_what_the_family_supports_and_why_not(scene: Any, vfmod: Any) -> None:
    draw = vfmod("panels.families").draw_family
    settings = scene.viewfinder
    shown: dict[str, list[tuple[str, str]]] = {}
    for family in ("SD15", "SDXL", "FLUX"):
        settings.model_family = family
        shown[family] = Layout().calls
        draw(Layout(shown[family]), settings)
    props = {family: [name for kind, name in calls if kind == "prop"] for family, calls in shown.items()}
    assert props == {"SD15": ["model_family"], "SDXL": ["model_family", "controlnet_union"],
                     "FLUX": ["model_family", "controlnet_union"]}
    refused = {family: [text for kind, text in calls if kind == "label" and text.endswith("not with this family")]
               for family, calls in shown.items()}
    assert refused == {
        "SD15": ["Union ControlNet: not with this family"], "SDXL": [],
        "FLUX": [f"{name}: not with this family" for name in ("One ControlNet per map", "Characters",
                                                             "Reference images", "Draft tier",
                                                             "Single-file checkpoints")]}
    assert ("label", "Flux.1 is made for 1024 px frames; Long Edge is 512") in shown["FLUX"]
    assert any("joint" in text for kind, text in shown["FLUX"] if kind == "label")


ENGINE, ENGINE_PYTHON, LOCAL_ENGINE = needs_engine()


@ENGINE
@ENGINE_PYTHON
@LOCAL_ENGINE
@pytest.mark.parametrize("family", ["SDXL", "FLUX"])
def test_a_film_generated_end_to_end(tmp_path: Path, tiny_models: Path, family: str) -> None:
    """Generate All on SDXL, then on Flux: every shot a take with its frames, take.json naming the family."""
    scene = film(tmp_path, tiny_models, family)
    assert bpy.ops.viewfinder.generate(shot="") == {"FINISHED"}
    editor = scene.sequence_editor
    strips = editor.strips if hasattr(editor, "strips") else editor.sequences
    takes = sorted((s for s in strips if s.get("viewfinder_kind") == "take"), key=lambda s: s.frame_final_start)
    assert [(s.name, s.frame_final_start, s.frame_final_end - 1) for s in takes] == [
        ("Wide take 001", 1, 3), ("Close take 001", 4, 6)]
    for strip in takes:
        folder = Path(bpy.path.abspath(strip["viewfinder_take"]))
        info = json.loads((folder / "take.json").read_text())
        assert info["complete"] and info["models"]["family"] == family.lower()
        assert sorted(p.name for p in folder.glob("*.png")) == [f"{f:04d}.png" for f in info["frames_total"]]
