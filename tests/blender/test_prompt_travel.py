"""Prompt travel and animated shot settings in real Blender, against a real engine with tiny models.

Requests are recorded on their way to the engine (the add-on's own client, wrapped),
so the tests check what the engine was really sent and what it answered from its cache.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import bpy
import pytest
from blender_scenes import add_camera, bind_marker, needs_engine, use_tiny_models

pytestmark = needs_engine()

A, B = "a quiet street at night", "the street in flames"


@pytest.fixture()
def engine_log(monkeypatch, vfmod):
    """Every job body the add-on submits, and the engine's last answer for each job."""
    client_mod = vfmod("core.client.http")
    log = {"bodies": [], "status": {}}
    submit, status = client_mod.EngineClient.submit, client_mod.EngineClient.status

    def recording_submit(self, body):
        log["bodies"].append(json.loads(json.dumps(body)))
        return submit(self, body)

    def recording_status(self, job_id):
        answer = status(self, job_id)
        log["status"][job_id] = answer
        return answer

    monkeypatch.setattr(client_mod.EngineClient, "submit", recording_submit)
    monkeypatch.setattr(client_mod.EngineClient, "status", recording_status)
    return log


def last_status(log):
    return list(log["status"].values())[-1]


def build_shot(tmp_path, tiny_models, frames=24, seed=1313, name="travel.blend"):
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x = scene.render.resolution_y = 100
    scene.frame_start, scene.frame_end = 1, frames
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.0, 0.0, 0.0))
    camera = add_camera(scene, "Cam", location=(0.0, -8.0, 0.0))
    # A truck across the shot: every frame's control maps differ, so no two frames share a cache key.
    camera.keyframe_insert("location", frame=1)
    camera.location.x += 0.8
    camera.keyframe_insert("location", frame=frames)
    bind_marker(scene, "Travel", 1, camera)
    settings = scene.viewfinder
    use_tiny_models(settings, tiny_models)
    settings.long_edge, settings.steps, settings.batch_size = 64, 2, 4
    settings.style_prompt = "pencil sketch"
    shot = settings.shots["Travel"]
    shot.prompt, shot.coherence, shot.seed = "a street", "INDEPENDENT", seed
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / name))
    return scene, shot


def key(item, prop, points, interpolation="LINEAR"):
    """Key ``item.prop`` as a user does (value, then I over the field), then set the interpolation."""
    for frame, value in points:
        setattr(item, prop, value)
        item.keyframe_insert(prop, frame=frame)
    anim = bpy.context.scene.animation_data
    path = item.path_from_id(prop)
    for fcurve in fcurves(anim):
        if fcurve.data_path == path:
            for point in fcurve.keyframe_points:
                point.interpolation = interpolation


def fcurves(anim):
    """The Scene's F-curves on Blender 4.2 (action.fcurves) and 5.0 (slotted actions)."""
    action = anim.action
    if hasattr(action, "fcurves"):
        return list(action.fcurves)
    from bpy_extras import anim_utils

    return list(anim_utils.action_get_channelbag_for_slot(action, anim.action_slot).fcurves)


def set_key(scene, path, frame, value):
    fcurve = next(f for f in fcurves(scene.animation_data) if f.data_path == path)
    point = next(p for p in fcurve.keyframe_points if p.co[0] == frame)
    point.co[1] = value
    fcurve.update()


def curve_points(scene):
    return {f.data_path: [tuple(round(v, 4) for v in p.co) for p in f.keyframe_points]
            for f in fcurves(scene.animation_data)}


def take_frames(scene, shot_name):
    strips = scene.sequence_editor.strips if hasattr(scene.sequence_editor, "strips") else \
        scene.sequence_editor.sequences
    newest = max((s for s in strips if s.get("viewfinder_shot") == shot_name), key=lambda s: s.channel)
    folder = Path(bpy.path.abspath(newest["viewfinder_take"]))
    # The PNG bytes: the engine encodes equal pixels to equal files, so equal bytes are equal frames.
    return {int(png.stem): png.read_bytes() for png in sorted(folder.glob("*.png"))}


def equal(a, b):
    return a == b


def clear_engine_cache():
    """Empty the test engine's frame cache, so the next frames are really generated again."""
    shutil.rmtree(Path.home() / ".cache" / "viewfinder-engine" / "cache", ignore_errors=True)


def test_cross_fade_ends_on_each_prompt_and_an_edit_regenerates_only_its_frames(tmp_path, tiny_models, engine_log):
    scene, shot = build_shot(tmp_path, tiny_models)
    # A holds to frame 12, then fades into B by frame 21: keys as in the Graph Editor. With batches of
    # 4, frames 1-12 (A alone) and 21-24 (B alone) share batches exactly as in the single-prompt shots:
    # on the CPU a frame's lowest bits depend on the frames batched with it (measured: 1 level on 1
    # pixel of 4096), which is the engine's long-standing batch behaviour, not the blend's.
    for text in (A, B):
        shot.prompt_keys.add().prompt = text
    key(shot.prompt_keys[0], "weight", [(1, 1.0), (12, 1.0), (21, 0.0)])
    key(shot.prompt_keys[1], "weight", [(1, 0.0), (12, 0.0), (21, 1.0)])
    assert bpy.ops.viewfinder.generate(shot="Travel") == {"FINISHED"}
    body = engine_log["bodies"][-1]
    assert body["prompt_keys"] == [A, B] and body["prompt"] == "a street"
    weights = {f["frame"]: f["prompt_weights"] for f in body["frames"]}
    assert weights[1] == weights[12] == [1.0, 0.0] and weights[21] == weights[24] == [0.0, 1.0]
    assert weights[15] == [0.6667, 0.3333]
    assert last_status(engine_log)["cached_frames"] == []
    travel = take_frames(scene, "Travel")
    assert sorted(travel) == list(range(1, 25))

    # The same shot with A alone, then B alone, generated again from an empty cache.
    alone = {}
    assert bpy.ops.viewfinder.remove_prompt_key(index=0) == bpy.ops.viewfinder.remove_prompt_key() == {"FINISHED"}
    clear_engine_cache()
    for text in (A, B):
        shot.prompt = text
        assert bpy.ops.viewfinder.generate(shot="Travel") == {"FINISHED"}
        assert "prompt_keys" not in engine_log["bodies"][-1]
        assert last_status(engine_log)["cached_frames"] == []
        alone[text] = take_frames(scene, "Travel")
    assert not shot.prompt_keys and not any("prompt_keys" in p for p in curve_points(scene))
    assert equal(travel[1], alone[A][1]) and equal(travel[12], alone[A][12])
    assert equal(travel[21], alone[B][21]) and equal(travel[24], alone[B][24])
    for middle in (13, 16, 20):
        assert not equal(travel[middle], alone[A][middle]), middle
        assert not equal(travel[middle], alone[B][middle]), middle

    # Keys back as they were: the first take is reused; then one edit regenerates frames 13-24 only.
    shot.prompt = "a street"
    for text in (A, B):
        shot.prompt_keys.add().prompt = text
    key(shot.prompt_keys[0], "weight", [(1, 1.0), (12, 1.0), (21, 0.0)])
    key(shot.prompt_keys[1], "weight", [(1, 0.0), (12, 0.0), (21, 1.0)])
    submitted = len(engine_log["bodies"])
    assert bpy.ops.viewfinder.generate(shot="Travel") == {"FINISHED"}
    assert len(engine_log["bodies"]) == submitted  # answered by the take on disk
    key(shot.prompt_keys[1], "weight", [(21, 0.5)])
    assert bpy.ops.viewfinder.generate(shot="Travel") == {"FINISHED"}
    status = last_status(engine_log)
    # Frames 13-20 blend differently now; from frame 21 B is still the only prompt: the same frames.
    assert status["cached_frames"] == [*range(1, 13), *range(21, 25)]
    assert sorted(set(status["frames"]) - set(status["cached_frames"])) == list(range(13, 21))
    edited = take_frames(scene, "Travel")
    assert all(equal(edited[f], travel[f]) for f in (*range(1, 13), *range(21, 25)))
    assert not equal(edited[16], travel[16])


def test_keyed_weights_driver_and_seed_reach_the_engine_per_frame(tmp_path, tiny_models, engine_log, capsys):
    scene, shot = build_shot(tmp_path, tiny_models, frames=5, seed=3)
    key(shot, "depth_weight", [(1, 1.0), (5, 0.0)])
    key(shot, "seed", [(1, 3), (4, 9)], interpolation="LINEAR")  # held between keys whatever the curve says
    shot.use_guidance_scale = True
    key(shot, "guidance_scale", [(1, 4.0), (3, 6.0)])
    driver = scene.driver_add(shot.path_from_id("pose_weight")).driver
    driver.expression = "frame / 10"
    assert bpy.ops.viewfinder.generate(shot="Travel") == {"FINISHED"}
    body = engine_log["bodies"][-1]
    assert (body["depth_weight"], body["seed"], body["guidance_scale"], body["pose_weight"]) == (1.0, 3, 4.0, 0.1)
    own = {f["frame"]: {k: v for k, v in f.items() if k not in ("frame", "depth", "pose", "flow")}
           for f in body["frames"]}
    assert own == {
        1: {},
        2: {"depth_weight": 0.75, "guidance_scale": 5.0, "pose_weight": 0.2},
        3: {"depth_weight": 0.5, "guidance_scale": 6.0, "pose_weight": 0.3},
        4: {"depth_weight": 0.25, "guidance_scale": 6.0, "pose_weight": 0.4, "seed": 9},
        5: {"depth_weight": 0.0, "guidance_scale": 6.0, "pose_weight": 0.5, "seed": 9},
    }
    assert "prompt_keys" not in body
    assert last_status(engine_log)["status"] == "done"
    info = json.loads((tmp_path / "viewfinder" / "Travel" / "takes" / "001" / "take.json").read_text())
    assert info["settings"]["per_frame"]["4"]["seed"] == 9

    # Bad keys: a seed below 0 and a depth weight above the engine's 2 are clamped, with warnings.
    set_key(scene, shot.path_from_id("seed"), 4, -5.0)  # a curve value the property itself would refuse
    key(shot, "depth_weight", [(5, 3.5)])
    capsys.readouterr()
    assert bpy.ops.viewfinder.generate(shot="Travel") == {"FINISHED"}
    err = capsys.readouterr().err
    assert "Shot 'Travel': Seed is -5 on frame 4 (and frames 5), outside 0–2147483647: clamped to 0" in err
    assert "Depth Weight is 2.25 on frame 3 (and frames 4-5), outside 0.0–2.0: clamped to 2.0" in err
    frames = {f["frame"]: f for f in engine_log["bodies"][-1]["frames"]}
    assert frames[4]["seed"] == frames[5]["seed"] == 0 and frames[5]["depth_weight"] == 2.0

    # Control start past control end on some frames: named, nothing sent.
    key(shot, "control_start", [(1, 0.0), (5, 1.0)])
    submitted = len(engine_log["bodies"])
    with pytest.raises(RuntimeError, match="Control Start is not below Control End on frames 5"):
        bpy.ops.viewfinder.generate(shot="Travel")
    assert len(engine_log["bodies"]) == submitted


def test_all_zero_weights_fall_back_to_the_shot_prompt_with_a_warning(tmp_path, tiny_models, engine_log, capsys):
    scene, shot = build_shot(tmp_path, tiny_models, frames=4, seed=77)
    scene.frame_set(3)
    assert bpy.ops.viewfinder.add_prompt_key(prompt=A) == {"FINISHED"}
    assert curve_points(scene)["viewfinder.shot_list[0].prompt_keys[0].weight"] == [(2.0, 0.0), (3.0, 1.0)]
    with pytest.raises(RuntimeError, match="Type a prompt"):
        bpy.ops.viewfinder.add_prompt_key(prompt="   ")
    assert len(shot.prompt_keys) == 1
    capsys.readouterr()
    assert bpy.ops.viewfinder.generate(shot="Travel") == {"FINISHED"}
    assert ("Shot 'Travel': every prompt key's weight is 0 on frames 1-2, so they use the shot prompt"
            in capsys.readouterr().err)
    frames = {f["frame"]: f["prompt_weights"] for f in engine_log["bodies"][-1]["frames"]}
    assert frames == {1: [0.0], 2: [0.0], 3: [1.0], 4: [1.0]}
    # The fallback frames are the shot prompt's frames: a plain shot finds them in the cache.
    bpy.ops.viewfinder.remove_prompt_key()
    assert bpy.ops.viewfinder.generate(shot="Travel") == {"FINISHED"}
    assert last_status(engine_log)["cached_frames"] == [1, 2]


def test_keys_follow_their_shot_through_sync_archive_and_reload(tmp_path, tiny_models):
    scene, _ = build_shot(tmp_path, tiny_models, frames=30)
    bind_marker(scene, "Later", 20, add_camera(scene, "Cam2", location=(1.0, -8.0, 0.0)))
    later = scene.viewfinder.shots["Later"]
    later.prompt_keys.add().prompt = A
    key(later.prompt_keys[0], "weight", [(20, 0.0), (30, 1.0)])
    key(later, "depth_weight", [(20, 0.5), (30, 1.5)])
    assert set(curve_points(scene)) == {"viewfinder.shot_list[1].prompt_keys[0].weight",
                                        "viewfinder.shot_list[1].depth_weight"}

    # A shot added before "Later" moves it to index 2: its curves go with it.
    bind_marker(scene, "Insert", 10, add_camera(scene, "Cam3"))
    assert [s.name for s in scene.viewfinder.shots] == ["Travel", "Insert", "Later"]
    assert set(curve_points(scene)) == {"viewfinder.shot_list[2].prompt_keys[0].weight",
                                        "viewfinder.shot_list[2].depth_weight"}
    scene.frame_set(25)
    later = scene.viewfinder.shots["Later"]
    assert later.depth_weight == pytest.approx(1.0) and later.prompt_keys[0].weight == pytest.approx(0.5)
    assert scene.viewfinder.shots["Insert"].depth_weight == 1.0 and not scene.viewfinder.shots["Insert"].prompt_keys

    # Its marker removed: settings and curves wait in the archive; back with the marker.
    marker = next(m for m in scene.timeline_markers if m.name == "Later")
    camera = marker.camera
    scene.timeline_markers.remove(marker)
    assert [s.name for s in scene.viewfinder.shots] == ["Travel", "Insert"]
    assert all(p.startswith("viewfinder.shot_archive[0].") for p in curve_points(scene))
    bind_marker(scene, "Later", 20, camera)
    later = scene.viewfinder.shots["Later"]
    assert [k.prompt for k in later.prompt_keys] == [A]
    assert set(curve_points(scene)) == {"viewfinder.shot_list[2].prompt_keys[0].weight",
                                        "viewfinder.shot_list[2].depth_weight"}

    # Save and reload: prompt keys, curves and values survive.
    bpy.ops.wm.save_mainfile()
    path = bpy.data.filepath
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=path)
    scene = bpy.context.scene
    later = scene.viewfinder.shots["Later"]
    assert [k.prompt for k in later.prompt_keys] == [A]
    assert curve_points(scene)["viewfinder.shot_list[2].depth_weight"] == [(20.0, 0.5), (30.0, 1.5)]
    scene.frame_set(30)
    assert later.prompt_keys[0].weight == pytest.approx(1.0)

    # Removing a prompt key removes its curve and moves the later keys' curves down.
    later.prompt_keys.add().prompt = B
    key(later.prompt_keys[1], "weight", [(20, 1.0)])
    scene.viewfinder.active_shot_index = 2
    assert bpy.ops.viewfinder.remove_prompt_key(index=0) == {"FINISHED"}
    assert [k.prompt for k in later.prompt_keys] == [B]
    assert curve_points(scene)["viewfinder.shot_list[2].prompt_keys[0].weight"] == [(20.0, 1.0)]
    assert "viewfinder.shot_list[2].prompt_keys[1].weight" not in curve_points(scene)


DEFORUM_SETTINGS = {
    "prompts": {"0": A, "12": B, "24": A},
    "strength_schedule": "0: (0.65), 12: (0.4)",
    "cfg_scale_schedule": "0: (7), 24: (11)",
    "seed_behavior": "schedule", "seed_schedule": "0:(5), 12:(6)",
    "cn_1_enabled": True, "cn_1_module": "depth_midas", "cn_1_weight": "0:(1), 24:(0.5)",
}


def test_deforum_settings_import_into_keys_and_curves_and_survive_reload(tmp_path, tiny_models, capsys):
    scene, shot = build_shot(tmp_path, tiny_models, frames=40)
    # The shot starts at frame 5: Deforum frame 0 is the shot's first frame.
    next(m for m in scene.timeline_markers).frame = 5
    shot = scene.viewfinder.shots["Travel"]
    settings = tmp_path / "deforum_settings.txt"
    settings.write_text(json.dumps(DEFORUM_SETTINGS, indent=4))
    assert bpy.ops.viewfinder.import_deforum(filepath=str(settings)) == {"FINISHED"}
    assert [k.prompt for k in shot.prompt_keys] == [A, B]
    points = curve_points(scene)
    base = "viewfinder.shot_list[0]."
    assert points[base + "prompt_keys[0].weight"] == [(5.0, 1.0), (17.0, 0.0), (29.0, 1.0)]
    assert points[base + "prompt_keys[1].weight"] == [(5.0, 0.0), (17.0, 1.0), (29.0, 0.0)]
    assert points[base + "flow_strength"] == [(5.0, 0.35), (17.0, 0.6)]
    assert points[base + "guidance_scale"] == [(5.0, 7.0), (29.0, 11.0)] and shot.use_guidance_scale
    assert points[base + "seed"] == [(5.0, 5.0), (17.0, 6.0)]
    assert points[base + "depth_weight"] == [(5.0, 1.0), (29.0, 0.5)]
    seed_curve = next(f for f in fcurves(scene.animation_data) if f.data_path == base + "seed")
    assert {p.interpolation for p in seed_curve.keyframe_points} == {"CONSTANT"}
    scene.frame_set(11)  # halfway from A to B
    assert shot.prompt_keys[0].weight == pytest.approx(0.5) and shot.prompt_keys[1].weight == pytest.approx(0.5)

    # Pasted text: a malformed line is named and skipped, the rest imports.
    capsys.readouterr()
    pasted = "0: a meadow\n6 a line without a colon\n20: a forest"
    assert bpy.ops.viewfinder.import_deforum(text=pasted, switch=True) == {"FINISHED"}
    assert "the pasted schedule: line 2: '6 a line without a colon' is not 'frame: prompt': skipped" in \
        capsys.readouterr().err
    assert [k.prompt for k in shot.prompt_keys] == ["a meadow", "a forest"]
    assert curve_points(scene)[base + "prompt_keys[1].weight"] == [(5.0, 0.0), (25.0, 1.0)]
    assert bpy.ops.viewfinder.import_deforum(text="0:(0.5), 10:(0.25)", target="pose_weight") == {"FINISHED"}
    assert curve_points(scene)[base + "pose_weight"] == [(5.0, 0.5), (15.0, 0.25)]
    with pytest.raises(RuntimeError, match="nothing to import"):
        bpy.ops.viewfinder.import_deforum(text="not a schedule at all")
    # A text in the Text Editor (the file browser's folder, with no file picked, is passed over).
    bpy.data.texts.new("schedule").write("0:(8), 10:(9)")
    assert bpy.ops.viewfinder.import_deforum(text_name="schedule", target="guidance_scale",
                                             filepath=str(tmp_path)) == {"FINISHED"}
    assert curve_points(scene)[base + "guidance_scale"] == [(5.0, 8.0), (15.0, 9.0)]
    with pytest.raises(RuntimeError, match="Cannot read the Deforum file .*missing.txt"):
        bpy.ops.viewfinder.import_deforum(filepath=str(tmp_path / "missing.txt"))

    bpy.ops.wm.save_mainfile()
    path = bpy.data.filepath
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=path)
    scene = bpy.context.scene
    assert [k.prompt for k in scene.viewfinder.shots["Travel"].prompt_keys] == ["a meadow", "a forest"]
    assert curve_points(scene)[base + "flow_strength"] == [(5.0, 0.35), (17.0, 0.6)]
    assert curve_points(scene)[base + "pose_weight"] == [(5.0, 0.5), (15.0, 0.25)]
