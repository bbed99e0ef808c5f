"""Takes on the VSE: exact ranges, channels above older takes, the user's strips untouched."""

from __future__ import annotations

import bpy
import numpy as np
import pytest


def write_frames(directory, frames, value):
    directory.mkdir(parents=True, exist_ok=True)
    image = bpy.data.images.new("tmp", 8, 8)
    image.pixels.foreach_set(np.full(8 * 8 * 4, value, dtype=np.float32))
    image.file_format = "PNG"
    names = []
    for frame in frames:
        name = f"{frame:04d}.png"
        image.filepath_raw = str(directory / name)
        image.save()
        names.append(name)
    bpy.data.images.remove(image)
    return names


@pytest.fixture()
def vse(vfmod):
    return vfmod("core.timeline.vse")


def strips(scene):
    editor = scene.sequence_editor
    return list(editor.strips if hasattr(editor, "strips") else editor.sequences)


def test_take_strip_covers_shot_range_and_stacks_above_older_takes(scene, vse, tmp_path):
    scene.frame_end = 40
    editor = vse.ensure_editor(scene)
    user = (editor.strips if hasattr(editor, "strips") else editor.sequences).new_effect(
        name="Title", type="COLOR", channel=2, frame_start=10, **({"frame_end": 30} if bpy.app.version < (4, 4) else {"length": 20})
    )
    user_state = (user.channel, user.frame_final_start, user.frame_final_end, user.mute)
    frames = list(range(11, 21))
    names = write_frames(tmp_path / "001", frames, 0.5)
    first = vse.add_take_strip(scene, shot_name="A", take_label="001", take_dir=tmp_path / "001", frames=frames, file_names=names)
    assert (first.frame_final_start, first.frame_final_end) == (11, 21)
    assert first.channel != user.channel
    names2 = write_frames(tmp_path / "002", frames, 0.2)
    second = vse.add_take_strip(scene, shot_name="A", take_label="002", take_dir=tmp_path / "002", frames=frames, file_names=names2)
    assert second.channel > first.channel
    assert first.mute and not second.mute
    assert second.name == "A take 002"
    assert (user.channel, user.frame_final_start, user.frame_final_end, user.mute) == user_state
    vse.use_take(scene, first)
    assert not first.mute and second.mute
    assert len(strips(scene)) == 3


def test_gaps_in_frames_are_refused_and_leave_no_strip(scene, vse, tmp_path):
    names = write_frames(tmp_path / "t", [1, 3], 0.5)
    with pytest.raises(vse.VSEError, match="gaps"):
        vse.add_take_strip(scene, shot_name="A", take_label="001", take_dir=tmp_path / "t", frames=[1, 3], file_names=names)
    assert scene.sequence_editor is None or not strips(scene)


def test_use_take_operator_on_the_selected_strip(scene, vse, tmp_path):
    frames = [1, 2]
    first = vse.add_take_strip(scene, shot_name="A", take_label="001", take_dir=tmp_path / "001", frames=frames,
                               file_names=write_frames(tmp_path / "001", frames, 0.1))
    second = vse.add_take_strip(scene, shot_name="A", take_label="002", take_dir=tmp_path / "002", frames=frames,
                                file_names=write_frames(tmp_path / "002", frames, 0.9))
    assert not bpy.ops.viewfinder.use_take.poll()  # nothing selected yet
    scene.sequence_editor.active_strip = first
    assert bpy.ops.viewfinder.use_take() == {"FINISHED"}
    assert not first.mute and second.mute
    assert bpy.ops.viewfinder.open_take_folder() == {"FINISHED"}
