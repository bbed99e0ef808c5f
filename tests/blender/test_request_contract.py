"""One contract: what `collect_shot` builds passes the engine's own request model, for every kind of shot.

Real scenes, real control maps; the body is assembled as `run_shot` sends it (maps by
sha256) and validated with engine/contract/schema.py's JobRequest, so a field the add-on renames
or a value out of the engine's range fails here rather than at submit. No engine runs.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import bpy
import pytest
from blender_scenes import add_camera, bind_marker
from cast_scenes import ROOT, add_reference, build_cast, collect, save_png

pytest.importorskip("pydantic", reason="the bpy venvs get pydantic from requirements/blender-*.txt: run `make setup`")


@pytest.fixture(scope="module")
def schema() -> Any:
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module("engine.contract.schema")
    finally:
        sys.path.remove(str(ROOT))


def validate(schema: Any, vfmod: Any, job: Any) -> Any:
    """The engine's parsed request for `job`, with its frames as run_shot sends them."""
    generate, request = vfmod("core.generate.shot"), vfmod("core.jobs.request")
    paths = {p for maps in job.maps.values() for p in maps.values() if p is not None}
    hashes = {p: generate.file_sha256(p) for p in paths}
    body = job.request.body(request.frame_entries(job.frames, job.maps, hashes, job.frame_values))
    parsed = schema.JobRequest.model_validate(body)
    # Every value the add-on sends arrives as sent (nothing renamed, dropped or coerced away).
    dumped = parsed.model_dump()
    for key, value in body.items():
        if key not in ("models", "coherence", "video", "characters", "frames", "finalize"):
            assert dumped[key] == value, key
    assert {k: v for k, v in dumped["models"].items() if k in body["models"]} == body["models"]
    return parsed


def plain_scene(tmp_path: Path) -> Any:
    """A box and a camera, no person: pose maps are never sent."""
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 160, 90
    scene.frame_start, scene.frame_end = 1, 3
    bpy.ops.mesh.primitive_cube_add(size=2.0, location=(0.0, 0.0, 0.0))
    camera = add_camera(scene, "Cam", location=(0.0, -8.0, 0.0))
    camera.keyframe_insert("location", frame=1)
    camera.location.x = 0.5
    camera.keyframe_insert("location", frame=3)
    bind_marker(scene, "Box", 1, camera)
    scene.viewfinder.long_edge = 128
    shot = scene.viewfinder.shots["Box"]
    shot.prompt, shot.negative_prompt = "a box on a table", "blurry"
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "box.blend"))
    return scene


@pytest.mark.parametrize("coherence", ["INDEPENDENT", "FLOW"])
def test_a_shot_without_a_person(tmp_path: Path, vfmod: Any, schema: Any, coherence: str) -> None:
    scene = plain_scene(tmp_path)
    scene.viewfinder.shots["Box"].coherence = coherence
    job = collect(scene, vfmod, "Box")
    parsed = validate(schema, vfmod, job)
    assert (parsed.width, parsed.height) == (128, 72) and [f.frame for f in parsed.frames] == [1, 2, 3]
    assert all(f.pose is None and f.mask is None for f in parsed.frames)
    assert parsed.coherence.mode == coherence and parsed.negative_prompt == "blurry"
    if coherence == "FLOW":
        # The exact flow of every frame, and the shot's depth range for the disocclusion check.
        assert all(f.flow is not None for f in parsed.frames[1:])
        near, far = parsed.coherence.depth_range
        assert 0 < near < far
    else:
        assert parsed.coherence.depth_range is None
    # Nothing re-read meta.json: the maps are the manifest render_shot returned.
    assert job.maps[2]["depth"] == job.conditioning_dir / "depth" / "0002.png"


@pytest.mark.parametrize("coherence", ["INDEPENDENT", "FLOW"])
def test_a_shot_with_people_and_their_characters(tmp_path: Path, vfmod: Any, schema: Any, coherence: str) -> None:
    scene = build_cast(tmp_path)
    add_reference(scene.viewfinder.characters["Hero"], save_png(tmp_path / "hero.png", 12, 10))
    shot = scene.viewfinder.shots["Both"]
    shot.coherence = coherence
    job = collect(scene, vfmod, "Both")
    parsed = validate(schema, vfmod, job)
    assert any(f.pose is not None for f in parsed.frames)  # the rigs are seen: their OpenPose maps are sent
    assert all(f.mask is not None for f in parsed.frames)
    assert [c.name for c in parsed.characters] == ["Hero", "Stranger"]
    assert parsed.characters[0].references == [vfmod("core.jobs.characters").file_sha256(tmp_path / "hero.png")]
    assert parsed.models.ip_adapter == scene.viewfinder.ip_adapter
    assert parsed.coherence.mode == coherence


def test_animated_values_and_prompt_keys(tmp_path: Path, vfmod: Any, schema: Any) -> None:
    scene = plain_scene(tmp_path)
    shot = scene.viewfinder.shots["Box"]
    for text in ("a red box", "a blue box"):
        shot.prompt_keys.add().prompt = text
    for frame, weight in ((1, 1.0), (3, 0.0)):
        shot.prompt_keys[0].weight = weight
        shot.prompt_keys[0].keyframe_insert("weight", frame=frame)
    for frame, value in ((1, 0.5), (3, 1.5)):
        shot.depth_weight = value
        shot.keyframe_insert("depth_weight", frame=frame)
    job = collect(scene, vfmod, "Box")
    parsed = validate(schema, vfmod, job)
    assert parsed.prompt_keys == ["a red box", "a blue box"]
    assert parsed.depth_weight == 0.5  # the job's value: the first frame's
    assert parsed.frames[2].depth_weight == 1.5 and parsed.frames[2].prompt_weights[0] == 0.0


def test_a_video_shot(tmp_path: Path, vfmod: Any, schema: Any) -> None:
    scene = plain_scene(tmp_path)
    shot = scene.viewfinder.shots["Box"]
    shot.generator = "VIDEO"
    shot.reference_image = str(save_png(tmp_path / "ref.png", 8, 8))
    job = collect(scene, vfmod, "Box")
    parsed = validate(schema, vfmod, job)
    assert parsed.generator == "VIDEO" and parsed.video.model == vfmod("core.jobs.request").DEFAULT_VIDEO_MODEL
    assert parsed.video.references == [vfmod("core.generate.shot").file_sha256(tmp_path / "ref.png")]
    scene.viewfinder.video_model_preset = "ANIMATEDIFF"
    parsed = validate(schema, vfmod, collect(scene, vfmod, "Box"))
    assert parsed.video.pipeline == "ANIMATEDIFF" and parsed.video.motion_adapter == scene.viewfinder.motion_adapter


def test_a_character_reference_sheet(tmp_path: Path, vfmod: Any, schema: Any) -> None:
    scene = build_cast(tmp_path)
    prefs = vfmod("preferences").get_prefs(bpy.context)
    project = vfmod("operators.common").project_of(bpy.context)
    sheet = vfmod("core.jobs.reference_sheet").prepare_sheet(scene, scene.viewfinder.characters["Hero"], project, prefs)
    parsed = validate(schema, vfmod, sheet.job)
    assert len(parsed.frames) == 3 and (parsed.width, parsed.height) == (64, 64)
    assert [c.name for c in parsed.characters] == ["Hero"] and all(f.mask for f in parsed.frames)


def test_an_unknown_field_is_refused_by_the_engine_as_it_is_by_the_typed_request(vfmod: Any, schema: Any) -> None:
    """The check above can fail: the engine refuses what it does not know, and so does the typed value."""
    request = vfmod("core.jobs.request")
    job = request.JobRequest(shot="A", models=request.ModelSpec())
    with pytest.raises(Exception, match="colour"):
        schema.JobRequest.model_validate({**job.body([{"frame": 1}]), "colour": "red"})
    with pytest.raises(TypeError, match="colour"):
        request.JobRequest(shot="A", models=request.ModelSpec(), colour="red")
