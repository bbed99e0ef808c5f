"""Storyboard and animatic exports from takes on the VSE."""

from __future__ import annotations

import math
import struct
import wave

import bpy
import numpy as np
import pytest
from blender_scenes import add_camera, bind_marker


def write_png(path, width, height, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = bpy.data.images.new("tmp", width, height)
    pixels = np.empty((height, width, 4), dtype=np.float32)
    pixels[...] = (*rgb, 1.0)
    image.pixels.foreach_set(pixels.ravel())
    image.filepath_raw = str(path)
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)


def write_wav(path, seconds=2.0, rate=48000):
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(int(rate * seconds)))
        out.writeframes(frames)


@pytest.fixture()
def edited(scene, vfmod, tmp_path):
    """Three shots, each with one fake take on the VSE, and a sound strip."""
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "film.blend"))
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 320, 180
    scene.render.fps = 24
    scene.frame_start, scene.frame_end = 1, 12
    for name, frame, i in (("A", 1, 0), ("B", 5, 1), ("C", 9, 2)):
        bind_marker(scene, name, frame, add_camera(scene, f"Cam{i}"))
    vse, takes, paths = vfmod("core.timeline.vse"), vfmod("core.timeline.takes"), vfmod("core.timeline.paths")
    project = paths.project_for(bpy.data.filepath, scene.name)
    colors = {"A": (1, 0, 0), "B": (0, 1, 0), "C": (0, 0, 1)}
    for shot in scene.viewfinder.shots:
        take_dir = takes.new_take_dir(project.takes_dir(shot.name))
        frames = list(range(shot.frame_start, shot.frame_end + 1))
        for f in frames:
            write_png(take_dir / paths.frame_name(f), 64, 36, colors[shot.name])
        takes.write_take(take_dir, takes.TakeInfo(
            shot=shot.name, take=take_dir.name, prompt=f"prompt {shot.name}", style_prompt="", negative_prompt="",
            seed=1, models={}, settings={}, control_hash="c", request_hash="r", frames_total=frames,
            frames_done=frames, complete=True))
        vse.add_take_strip(scene, shot_name=shot.name, take_label=take_dir.name, take_dir=take_dir, frames=frames,
                           file_names=[paths.frame_name(f) for f in frames])
    wav = tmp_path / "tone.wav"
    write_wav(wav)
    strips = scene.sequence_editor.strips if hasattr(scene.sequence_editor, "strips") else scene.sequence_editor.sequences
    try:
        strips.new_sound(name="tone", filepath=str(wav), channel=1, frame_start=1)
    except RuntimeError as exc:  # the bpy 4.2 wheel is built without Audaspace
        assert "Audaspace" in str(exc)
    return scene, project


def test_storyboard_has_one_row_per_shot_with_its_frames(edited, tmp_path):
    scene, project = edited
    out = tmp_path / "board.png"
    assert bpy.ops.viewfinder.export_storyboard(filepath=str(out)) == {"FINISHED"}
    image = bpy.data.images.load(str(out))
    width, height = image.size
    pixels = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    rgba = pixels.reshape(height, width, 4)[::-1]  # top row first
    # Each shot's colour shows up, in order from top to bottom.
    rows = []
    for channel in range(3):
        mask = (rgba[..., channel] > 0.8) & (rgba[..., (channel + 1) % 3] < 0.2) & (rgba[..., (channel + 2) % 3] < 0.2)
        ys = np.nonzero(mask.any(axis=1))[0]
        assert ys.size, f"shot colour {channel} missing from the storyboard"
        rows.append(ys.mean())
        # first, middle and last frame: three separate thumbnails in the row
        xs = np.nonzero(mask.any(axis=0))[0]
        assert (np.diff(xs) > 1).sum() == 2
    assert rows == sorted(rows)


def test_animatic_has_one_frame_per_timeline_frame_and_restores_settings(edited, tmp_path):
    scene, _ = edited
    before = (scene.render.filepath, scene.render.image_settings.file_format, scene.render.use_sequencer)
    out = tmp_path / "animatic.mp4"
    assert bpy.ops.viewfinder.export_animatic(filepath=str(out)) == {"FINISHED"}
    assert out.stat().st_size > 1000
    clip = bpy.data.movieclips.load(str(out))
    assert clip.frame_duration == scene.frame_end - scene.frame_start + 1
    assert (scene.render.filepath, scene.render.image_settings.file_format, scene.render.use_sequencer) == before


def test_storyboard_without_shots_is_refused_with_a_message(scene):
    assert not bpy.ops.viewfinder.export_storyboard.poll()
