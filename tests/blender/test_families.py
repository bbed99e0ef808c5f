"""Model families in Blender (issue 24): the panels show what the family supports and say why the rest is not
available, what a shot sends for each family (and leaves out, with the reason), and a two-shot film generated end
to end on SDXL and on Flux.1 with tiny models against a real engine process (the demo film per family:
test_demo.py)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bpy
import pytest
from blender_scenes import add_camera, bind_marker, needs_engine
from cast_scenes import ROOT, add_reference, build_cast, collect, save_png


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
    """A stand-in for a panel's layout: records what is drawn as (what, name or text, shown active)."""

    def __init__(self, calls: list[tuple[str, str, bool]] | None = None, parent: Layout | None = None) -> None:
        self.calls = [] if calls is None else calls
        self.parent = parent
        self.active = self.enabled = True

    def shown(self) -> bool:
        return self.active and self.enabled and (self.parent is None or self.parent.shown())

    def prop(self, data: Any, name: str, **_: Any) -> None:
        self.calls.append(("prop", name, self.shown()))

    template_ID = prop

    def label(self, text: str = "", **_: Any) -> None:
        self.calls.append(("label", text, self.shown()))

    def operator(self, idname: str, **_: Any) -> Any:
        self.calls.append(("operator", idname, self.shown()))
        return SimpleNamespace()

    def child(self, *_: Any, **__: Any) -> Layout:
        return Layout(self.calls, self)

    row = column = box = split = grid_flow = child

    def ignore(self, *_: Any, **__: Any) -> None:
        return None

    template_list = template_icon = separator = prop_search = ignore

    def icon(self, *_: Any) -> int:
        return 0


def draw(vfmod: Any, module: str, panel: str) -> list[tuple[str, str, bool]]:
    """What ``panel`` draws for the current scene."""
    layout = Layout()
    getattr(vfmod(module), panel).draw(SimpleNamespace(layout=layout), bpy.context)
    return layout.calls


def props(calls: list[tuple[str, str, bool]]) -> dict[str, bool]:
    return {name: active for kind, name, active in calls if kind == "prop"}


def labels(calls: list[tuple[str, str, bool]]) -> list[str]:
    return [text for kind, text, _ in calls if kind == "label"]


def test_the_film_panel_shows_what_the_family_supports_and_why_not(scene: Any, vfmod: Any) -> None:
    settings = scene.viewfinder
    shown: dict[str, list[tuple[str, str, bool]]] = {}
    for family in ("SD15", "SDXL", "FLUX"):
        settings.model_family = family
        shown[family] = draw(vfmod, "panels.view3d", "VIEWFINDER_PT_film")
    block = {family: [name for name in props(calls) if name in ("model_family", "controlnet_union")]
             for family, calls in shown.items()}
    assert block == {"SD15": ["model_family"], "SDXL": ["model_family", "controlnet_union"],
                     "FLUX": ["model_family", "controlnet_union"]}
    refused = {family: [text for text in labels(calls) if text.endswith("not with this family")]
               for family, calls in shown.items()}
    assert refused == {
        "SD15": ["Union ControlNet: not with this family"], "SDXL": [],
        "FLUX": [f"{name}: not with this family" for name in ("One ControlNet per map", "Characters",
                                                             "Reference images", "Draft tier",
                                                             "Single-file checkpoints")]}
    assert "Flux.1 is made for 1024 px frames; Long Edge is 512" in labels(shown["FLUX"])
    assert any("joint" in text for text in labels(shown["FLUX"]))
    # Per-map nets and the draft settings: shown where the family has them, gone on Flux (the block says why).
    nets = [f"controlnet_{kind}" for kind in ("depth", "pose", "normal", "lineart", "seg")]
    drafts = ["tier", "draft_scheduler", "draft_steps", "draft_lora"]
    for family, calls in shown.items():
        drawn = props(calls)
        assert all((name in drawn) == (family != "FLUX") for name in nets + drafts), (family, drawn)
        assert drawn["lora"] and drawn["long_edge"]  # LoRA on every family


def test_the_shot_panels_grey_out_what_the_family_cannot_take(tmp_path: Path, vfmod: Any) -> None:
    """Flux.1: the normal and seg weights greyed with the reason; a Draft shot says it is generated final."""
    scene = film(tmp_path, tmp_path / "models", "FLUX")
    shot = scene.viewfinder.shot_list[0]
    shot.normal_weight, shot.seg_weight, shot.tier = 0.5, 0.5, "DRAFT"
    seen = {}
    for family in ("SDXL", "FLUX"):
        scene.viewfinder.model_family = family
        seen[family] = (draw(vfmod, "panels.view3d", "VIEWFINDER_PT_shot"),
                        draw(vfmod, "panels.view3d", "VIEWFINDER_PT_map_ranges"))
    weights = {family: {k: v for k, v in props(shot_calls).items() if k.endswith("_weight") or k == "tier"}
               for family, (shot_calls, _) in seen.items()}
    assert weights == {
        "SDXL": {"depth_weight": True, "pose_weight": True, "normal_weight": True, "lineart_weight": True,
                 "seg_weight": True, "tier": True},
        "FLUX": {"depth_weight": True, "pose_weight": True, "normal_weight": False, "lineart_weight": True,
                 "seg_weight": False, "tier": False}}
    ranges = {family: props(range_calls) for family, (_, range_calls) in seen.items()}
    assert ranges["SDXL"]["use_normal_range"] and ranges["SDXL"]["use_seg_range"]
    assert (ranges["FLUX"]["use_normal_range"], ranges["FLUX"]["use_seg_range"], ranges["FLUX"]["use_depth_range"]) \
        == (False, False, True)
    flux = " ".join(labels(seen["FLUX"][0]))
    assert "Flux.1's union ControlNet has no normal or seg mode (it takes depth, pose, lineart): rendered and " \
           "shown, not sent" in flux
    assert "Not used with Flux.1:" in flux and "FLUX.1-schnell" in flux  # the draft tier's reason
    sdxl = " ".join(labels(seen["SDXL"][0]))
    assert "not sent" not in sdxl and "Not used with" not in sdxl


def test_the_characters_and_film_look_panels_say_why_not_on_flux(tmp_path: Path, vfmod: Any) -> None:
    """The bible stays editable but greyed, under the reason; the palette (matched after) stays active."""
    scene = build_cast(tmp_path)
    seen = {}
    for family in ("SDXL", "FLUX"):
        scene.viewfinder.model_family = family
        seen[family] = (draw(vfmod, "panels.characters", "VIEWFINDER_PT_characters"),
                        draw(vfmod, "panels.characters", "VIEWFINDER_PT_film_look"))
    characters, look = seen["FLUX"]
    assert labels(characters)[0] == "Not used with Flux.1:" and "joint" in " ".join(labels(characters)[1:4])
    assert props(characters) == {"description": False, "armature": False, "collection": False,
                                 "identity_strength": False, "lora": False}
    assert props(look) == {"style_prompt": True, "style_reference": False, "ip_adapter": False,
                           "image_encoder": False, "palette_reference": True}
    assert labels(look)[0] == "Not used with Flux.1:" and "IP-Adapter" in " ".join(labels(look)[1:3])
    characters, look = seen["SDXL"]
    assert all(props(characters).values()) and all(props(look).values())
    assert not any(text.startswith("Not used with") for text in labels(characters) + labels(look))


def test_a_flux_shot_leaves_out_what_flux_cannot_take_and_says_why(tmp_path: Path, vfmod: Any) -> None:
    """Characters, their references and the normal map stay unsent on Flux.1 (the engine would refuse them),
    a Draft shot goes at the final tier; each with a warning naming the reason. SDXL's union net takes the
    normal map without a net of its own, and the characters and references go."""
    scene = build_cast(tmp_path)
    add_reference(scene.viewfinder.characters["Hero"], save_png(tmp_path / "hero.png", 64, 64))
    settings = scene.viewfinder
    settings.controlnet_union, settings.ip_adapter = "/models/union", "/models/ip-adapter.safetensors"
    shot = settings.shots["Both"]
    shot.normal_weight, shot.tier = 0.5, "DRAFT"
    sent = {}
    for family in ("SDXL", "FLUX"):
        settings.model_family = family
        sent[family] = collect(scene, vfmod, "Both")
    sdxl, flux = sent["SDXL"], sent["FLUX"]
    body = {family: job.request.body([{"frame": 1}]) for family, job in sent.items()}
    assert sorted(c["name"] for c in body["SDXL"]["characters"]) == ["Hero", "Stranger"]
    assert body["SDXL"]["models"]["ip_adapter"] == "/models/ip-adapter.safetensors"
    assert "normal_weight" in sdxl.settings and "controlnet_normal" not in sdxl.models
    assert all(m.get("normal") and m.get("mask") for m in sdxl.maps.values())
    assert (sdxl.tier, sdxl.warnings) == ("draft", [])
    assert "characters" not in body["FLUX"] and "ip_adapter" not in body["FLUX"]["models"]
    assert "normal_weight" not in flux.settings and not any(m.get("normal") or m.get("mask")
                                                           for m in flux.maps.values())
    assert flux.tier == "final" and flux.characters == []
    assert [w.split(":")[1].strip() for w in flux.warnings] == [
        "Flux.1 has no draft tier (there is no LCM/TCD LoRA for Flux.1; use FLUX.1-schnell as the base for a "
        "few-step draft); generated at the final tier",
        "Normal maps", "reference images are not used on Flux.1", "characters (Hero, Stranger) are not used on Flux.1"]


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
