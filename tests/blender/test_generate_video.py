"""The VIDEO generator end to end in real Blender: a 200-frame shot -> control maps -> engine process
(tiny random-weight Wan VACE) in chained windows -> take on the VSE, one frame per timeline frame."""

from __future__ import annotations

import json
from pathlib import Path

import bpy
import numpy as np
from blender_scenes import add_camera, bind_marker, needs_engine

pytestmark = needs_engine()


def take_strips(scene: bpy.types.Scene) -> list:
    editor = scene.sequence_editor
    if editor is None:
        return []
    strips = editor.strips if hasattr(editor, "strips") else editor.sequences
    return [s for s in strips if s.get("viewfinder_kind") == "take"]


def write_reference(path: Path) -> None:
    image = bpy.data.images.new("ref", 32, 32)
    pixels = np.zeros((32, 32, 4), np.float32)
    pixels[..., 0], pixels[..., 3] = 0.8, 1.0
    image.pixels.foreach_set(pixels.ravel())
    image.filepath_raw = str(path)
    image.file_format = "PNG"
    image.save()


def test_200_frame_video_shot_through_three_windows_lands_on_the_vse(tmp_path: Path, tiny_models: Path,
                                                                     vfmod) -> None:
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x = scene.render.resolution_y = 64
    scene.frame_start, scene.frame_end = 1, 200
    for x in (-2.0, 0.0, 2.0):
        bpy.ops.mesh.primitive_cube_add(size=1.0, location=(x, 0.0, 0.0))
    cam = add_camera(scene, "Cam", location=(-1.0, -8.0, 0.0))
    cam.keyframe_insert("location", frame=1)
    cam.location.x += 2.0
    cam.keyframe_insert("location", frame=200)
    bind_marker(scene, "Long", 1, cam)
    settings = scene.viewfinder
    settings.long_edge, settings.steps = 64, 2
    # The scene stays on IMAGE; this shot overrides it. 200 frames in 81-frame windows: 3 windows.
    settings.generator = "IMAGE"
    settings.video_model_preset = "CUSTOM"
    settings.video_model = str(tiny_models / "wan-vace")
    assert (settings.video_window, settings.video_overlap) == (81, 8)
    shot = settings.shots[0]
    shot.prompt = "boxes on a table"
    shot.generator = "VIDEO"
    write_reference(tmp_path / "ref.png")
    shot.reference_image = str(tmp_path / "ref.png")
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "video.blend"))

    # The request the add-on sends: the video block, the reference image uploaded by content.
    shot_job, prefs_mod, ops_common = vfmod("core.generate.shot_job"), vfmod("preferences"), vfmod("operators.common")
    job = shot_job.collect_shot(scene, shot, ops_common.project_of(bpy.context), prefs_mod.get_prefs(bpy.context))
    assert job.request.to_dict()["generator"] == "VIDEO" and job.uploads == [tmp_path / "ref.png"]
    assert job.request.to_dict()["video"]["model"] == str(tiny_models / "wan-vace")
    assert len(job.request.to_dict()["video"]["references"][0]) == 64 and job.frames == list(range(1, 201))

    assert bpy.ops.viewfinder.generate(shot="Long") == {"FINISHED"}
    (strip,) = take_strips(scene)
    assert (strip.frame_final_start, strip.frame_final_end - 1) == (1, 200)
    folder = Path(bpy.path.abspath(strip["viewfinder_take"]))
    info = json.loads((folder / "take.json").read_text())
    assert info["complete"] and info["settings"]["generator"] == "VIDEO"
    # Every timeline frame has exactly one frame, in order, and the strip shows them one to one.
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{f:04d}.png" for f in range(1, 201)]
    assert [e.filename for e in strip.elements] == [f"{f:04d}.png" for f in range(1, 201)]

    # Generate again: every window comes from the engine's cache, the take is reused.
    assert bpy.ops.viewfinder.generate(shot="Long") == {"FINISHED"}
    assert len(take_strips(scene)) == 1
