"""Takes and control strips on the Video Sequence Editor, through the data API.

Viewfinder only ever adds strips, mutes/unmutes its own take strips, and
removes its own preview strips. It never moves, changes or deletes a strip it
did not make (the user's edit and sound are theirs). Main thread only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..compat import all_strips_of, strips_of
from .paths import frame_name

if TYPE_CHECKING:
    import bpy

log = logging.getLogger(__name__)

MAX_CHANNEL = 128
TAKE_KEY = "viewfinder_take"  # custom property on take strips: the take folder's absolute path
SHOT_KEY = "viewfinder_shot"
KIND_KEY = "viewfinder_kind"  # "take" or "control"


class VSEError(RuntimeError):
    """A strip could not be placed; the message says why and what to do."""


def ensure_editor(scene: bpy.types.Scene) -> Any:
    if scene.sequence_editor is None:
        scene.sequence_editor_create()
    return scene.sequence_editor


def _occupied(strips: Iterable[Any], channel: int, start: int, end: int) -> bool:
    """Whether any strip on `channel` overlaps frames [start, end] (inclusive)."""
    for strip in strips:
        if strip.channel != channel:
            continue
        s_start = int(strip.frame_final_start)
        s_end = int(strip.frame_final_end) - 1  # frame_final_end is exclusive
        if s_start <= end and start <= s_end:
            return True
    return False


def free_channel(scene: bpy.types.Scene, start: int, end: int, above: int = 0) -> int:
    """The lowest channel above `above` with frames [start, end] free."""
    strips = list(strips_of(ensure_editor(scene)))
    for channel in range(max(1, above + 1), MAX_CHANNEL + 1):
        if not _occupied(strips, channel, start, end):
            return channel
    raise VSEError(
        f"No free channel above {above} for frames {start}–{end}: delete old takes or previews to make room"
    )


def strips_of_shot(scene: bpy.types.Scene, shot_name: str, kind: str = "take") -> list[Any]:
    editor = scene.sequence_editor
    if editor is None:
        return []
    return [
        s for s in all_strips_of(editor) if s.get(KIND_KEY) == kind and s.get(SHOT_KEY) == shot_name
    ]


def take_strip(scene: bpy.types.Scene, shot_name: str, take_label: str, take_dir: Path) -> Any:
    """The strip that shows this take, or None. Looked up by the name `add_take_strip` gives first
    (a Generate All over 100 unchanged shots would otherwise scan every strip once per shot), then
    among the shot's strips, for a strip the user renamed."""
    editor = scene.sequence_editor
    if editor is None:
        return None
    take_dir_text = str(take_dir)

    def shows(strip: Any) -> bool:
        return (strip.get(KIND_KEY) == "take" and strip.get(SHOT_KEY) == shot_name
                and strip.get(TAKE_KEY) == take_dir_text)

    named = all_strips_of(editor).get(take_strip_name(shot_name, take_label))
    if named is not None and shows(named):
        return named
    return next((s for s in strips_of_shot(scene, shot_name) if s.get(TAKE_KEY) == take_dir_text), None)


def take_strip_name(shot_name: str, take_label: str) -> str:
    return f"{shot_name} take {take_label}"


def add_image_sequence(
    scene: bpy.types.Scene,
    *,
    name: str,
    directory: Path,
    files: Sequence[str],
    frame_start: int,
    channel: int,
) -> Any:
    """One image strip showing `files` (in order) from `frame_start`, one file per frame."""
    if not files:
        raise VSEError(f"No frames to place for '{name}'")
    editor = ensure_editor(scene)
    strips = strips_of(editor)
    strip = strips.new_image(
        name=name, filepath=str(directory / files[0]), channel=channel, frame_start=frame_start
    )
    try:
        strip.directory = _blend_relative(directory)
        for file_name in files[1:]:
            strip.elements.append(file_name)
        # Blender extends the strip as elements are appended; make sure of it
        # on every version so the strip covers exactly the shot.
        strip.frame_final_duration = len(files)
    except Exception:
        strips.remove(strip)  # never leave a half-made strip behind
        raise
    return strip


def add_take_strip(
    scene: bpy.types.Scene,
    *,
    shot_name: str,
    take_label: str,
    take_dir: Path,
    frames: Sequence[int],
    file_names: Sequence[str],
) -> Any:
    """Put a finished take on the VSE above the shot's older takes, and mute those.

    Frames must be contiguous (one strip element per timeline frame).
    """
    if list(frames) != list(range(frames[0], frames[0] + len(frames))):
        raise VSEError(f"Take '{take_label}' of shot '{shot_name}' has gaps in its frames: regenerate it")
    start, end = frames[0], frames[-1]
    older = strips_of_shot(scene, shot_name)
    above = max((s.channel for s in older), default=1)
    channel = free_channel(scene, start, end, above=above)
    strip = add_image_sequence(
        scene, name=take_strip_name(shot_name, take_label), directory=take_dir, files=file_names,
        frame_start=start, channel=channel,
    )
    strip[KIND_KEY] = "take"
    strip[SHOT_KEY] = shot_name
    strip[TAKE_KEY] = str(take_dir)
    for other in older:
        other.mute = True
    strip.mute = False
    return strip


def use_take(scene: bpy.types.Scene, strip: Any) -> None:
    """Unmute this take and mute the shot's other takes."""
    shot_name = strip.get(SHOT_KEY)
    for other in strips_of_shot(scene, shot_name):
        other.mute = other != strip
    strip.mute = False


def add_control_strips(
    scene: bpy.types.Scene, *, shot_name: str, kind: str, directory: Path, frames: Sequence[int]
) -> list[Any]:
    """Show a shot's control maps (depth, pose, ...) on a channel of their own, above everything.

    One strip per run of consecutive frames (pose maps skip frames where
    nobody is visible). An older preview of the same maps is replaced; only
    strips Viewfinder tagged as its own previews are ever removed.
    """
    editor = ensure_editor(scene)
    strips = strips_of(editor)
    for old in strips_of_shot(scene, shot_name, kind="control"):
        if old.get("viewfinder_control") == kind:
            strips.remove(old)
    runs: list[list[int]] = []
    for frame in sorted(frames):
        if runs and frame == runs[-1][-1] + 1:
            runs[-1].append(frame)
        else:
            runs.append([frame])
    channel = max((s.channel for s in strips), default=0) + 1
    made = []
    for index, run in enumerate(runs):
        strip = add_image_sequence(
            scene, name=f"{shot_name} {kind.lower()} {index + 1}", directory=directory,
            files=[frame_name(f) for f in run], frame_start=run[0], channel=channel,
        )
        strip[KIND_KEY] = "control"
        strip[SHOT_KEY] = shot_name
        strip["viewfinder_control"] = kind
        if hasattr(strip, "colorspace_settings"):
            try:
                strip.colorspace_settings.name = "Non-Color"  # show the values the model sees
            except TypeError:
                pass
        made.append(strip)
    return made


def _blend_relative(directory: Path) -> str:
    """A `//`-relative directory when the folder is next to the saved .blend, so projects move as a whole."""
    import bpy  # deferred: importable without Blender

    path = str(directory) + os.sep
    if bpy.data.filepath:
        try:
            return bpy.path.relpath(path)
        except ValueError:  # another drive on Windows
            pass
    return path
