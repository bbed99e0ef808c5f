"""Storyboard (contact sheet) and animatic exports, rendered by Blender itself.

The storyboard is laid out as a one-frame VSE edit in a temporary scene (image
strips for thumbnails, text strips for the captions) and rendered with the
sequencer, so it needs no imaging library and gets Blender's own fonts. The
animatic renders the scene's VSE edit, sound included, through Blender's FFmpeg
output; every output setting it changes is restored. Main thread only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy

from ..compat import strips_of
from . import vse
from .paths import Project, frame_name
from .takes import list_takes, read_take

log = logging.getLogger(__name__)

SHEET_WIDTH = 1600
THUMB_WIDTH = 360
MARGIN = 20
CAPTION_WIDTH = SHEET_WIDTH - 3 * (THUMB_WIDTH + MARGIN) - MARGIN
TITLE_HEIGHT = 60


class ExportError(RuntimeError):
    """An export could not be made; the message says why and what to do."""


@dataclass
class StoryboardRow:
    shot: str
    frames: list[int]  # first, middle, last
    images: list[Path]
    lens: str
    duration: str
    prompt: str
    characters: list[str] = field(default_factory=list)  # the bible's characters sent with the take
    # The middle frame's control maps under the frames when the shot has normal, line-art or seg maps:
    # (label, image), at most three (depth fills in when fewer than three exist).
    maps: list[tuple[str, Path]] = field(default_factory=list)
    map_note: str = ""


def _length_kwargs(length: int) -> dict[str, int]:
    # 4.4 replaced `frame_end` with `length` in new_effect.
    return {"length": length} if bpy.app.version >= (4, 4, 0) else {"frame_end": 1 + length}


def storyboard_rows(scene: bpy.types.Scene, project: Project) -> list[StoryboardRow]:
    """One row per shot: the frames of the take in use (else the newest take, else the depth maps), and the
    middle frame's control maps when the shot has normal, line-art or seg maps (`map_thumbnails`)."""
    rows = []
    fps = scene.render.fps / scene.render.fps_base
    for shot in scene.viewfinder.shots:
        if shot.frame_end < shot.frame_start:
            continue
        first, last = shot.frame_start, shot.frame_end
        picks = [first, (first + last) // 2, last]
        folder = _take_folder_in_use(scene, shot.name) or _newest_take(project, shot.name)
        if folder is None:
            folder = project.conditioning_dir(shot.name) / "depth"
        images = [folder / frame_name(f) for f in picks]
        cam = shot.camera.data if shot.camera is not None and shot.camera.type == "CAMERA" else None
        if cam is None:
            lens = "no camera"
        elif cam.type == "ORTHO":
            lens = f"ortho {cam.ortho_scale:.1f}"
        else:
            lens = f"{cam.lens:.0f}mm"
        count = last - first + 1
        info = read_take(folder)
        maps, note = map_thumbnails(project, shot.name, picks[1])
        rows.append(StoryboardRow(
            shot.name, picks, images, lens, f"{count} frames ({count / fps:.1f} s)", shot.prompt or "(no prompt)",
            [c["name"] for c in info.characters] if info is not None else [], maps, note,
        ))
    return rows


MAP_LABELS = {"depth": "depth", "normal": "normal", "lineart": "line art", "seg": "segmentation"}


def map_thumbnails(project: Project, shot_name: str, frame: int) -> tuple[list[tuple[str, Path]], str]:
    """The shot's normal, line-art and seg maps of `frame` (its depth map first when fewer than three), and a caption.

    None when the shot has none of them: a depth + pose shot's row stays as it was. Segmentation
    shows in its preview colours (seg.write_previews; the map itself holds class indices).
    """
    from ..conditioning.seg import write_previews  # deferred: numpy work only when a shot has maps

    conditioning = project.conditioning_dir(shot_name)
    try:
        meta = json.loads((conditioning / "meta.json").read_text())
    except (OSError, ValueError):
        return [], ""
    kinds = [k for k in ("normal", "lineart", "seg") if frame in (meta.get("maps") or {}).get(k, {}).get("frames", [])]
    if not kinds:
        return [], ""
    name = frame_name(frame)
    shown = (["depth"] if len(kinds) < 3 else []) + kinds
    maps = []
    for kind in shown:
        image = conditioning / kind / name
        if kind == "seg":
            preview = project.shot_dir(shot_name) / "seg-preview"
            image = preview / name if write_previews(conditioning / "seg", preview, [name]) else image
        maps.append((MAP_LABELS[kind], image))
    form = meta["maps"].get("lineart", {}).get("form")
    note = f"control maps, frame {frame}: {', '.join(label for label, _ in maps)}"
    return maps, note + (f" ({form} form)" if form else "")


def _take_folder_in_use(scene: bpy.types.Scene, shot_name: str) -> Path | None:
    for strip in vse.strips_of_shot(scene, shot_name):
        if not strip.mute:
            return Path(bpy.path.abspath(strip[vse.TAKE_KEY]))
    return None


def _newest_take(project: Project, shot_name: str) -> Path | None:
    complete = [folder for folder, info in list_takes(project.takes_dir(shot_name)) if info.complete]
    return complete[-1] if complete else None


def export_storyboard(scene: bpy.types.Scene, project: Project, output: Path) -> Path:
    """Write the contact sheet PNG: one row per shot (first, middle, last frame + caption), and under it a row
    of the middle frame's control maps when the shot has normal, line-art or seg maps."""
    rows = storyboard_rows(scene, project)
    if not rows:
        raise ExportError("No shots to put on a storyboard: bind cameras to timeline markers first")
    aspect = scene.render.resolution_y * scene.render.pixel_aspect_y / (scene.render.resolution_x * scene.render.pixel_aspect_x)
    thumb_h = int(round(THUMB_WIDTH * aspect))
    row_h = thumb_h + MARGIN
    height = TITLE_HEIGHT + sum(row_h * (2 if row.maps else 1) for row in rows) + MARGIN
    sheet = bpy.data.scenes.new("Viewfinder Storyboard")
    try:
        sheet.render.resolution_x, sheet.render.resolution_y = SHEET_WIDTH, height
        sheet.render.resolution_percentage = 100
        sheet.frame_start = sheet.frame_end = 1
        sheet.render.use_sequencer = True
        sheet.render.image_settings.file_format = "PNG"
        sheet.render.image_settings.color_mode = "RGB"
        # Thumbnails must look like the frames on disk, not like a film-look render.
        sheet.view_settings.view_transform = "Standard"
        sheet.view_settings.look = "None"
        strips = strips_of(sheet.sequence_editor_create())
        channel = iter(range(1, 10_000))
        background = strips.new_effect(name="bg", type="COLOR", channel=next(channel), frame_start=1, **_length_kwargs(1))
        background.color = (0.06, 0.06, 0.06)
        captions = [(f"{Path(bpy.data.filepath).stem or scene.name}: storyboard", MARGIN, MARGIN, 32, None)]
        top = TITLE_HEIGHT
        for row in rows:
            _thumbnails(strips, channel, row.images, top, thumb_h, (SHEET_WIDTH, height))
            caption = f"{row.shot}\n{row.lens}, {row.duration}\nframes {row.frames[0]}, {row.frames[1]}, {row.frames[2]}\n{row.prompt}"
            if row.characters:
                caption += f"\nwith {', '.join(row.characters)}"
            captions.append((caption, MARGIN + 3 * (THUMB_WIDTH + MARGIN), top, 20, CAPTION_WIDTH - 2 * MARGIN))
            top += row_h
            if row.maps:
                _thumbnails(strips, channel, [image for _label, image in row.maps], top, thumb_h, (SHEET_WIDTH, height))
                captions.append((row.map_note, MARGIN + 3 * (THUMB_WIDTH + MARGIN), top, 18, CAPTION_WIDTH - 2 * MARGIN))
                top += row_h
        # Text goes on channels above every thumbnail so nothing covers it.
        for text, x, y, size, wrap in captions:
            _text(strips, next(channel), text, x=x, y=y, size=size, sheet=(SHEET_WIDTH, height), wrap=wrap)
        output.parent.mkdir(parents=True, exist_ok=True)
        sheet.render.filepath = str(output)
        with bpy.context.temp_override(scene=sheet):
            bpy.ops.render.render(write_still=True, scene=sheet.name)
    finally:
        bpy.data.scenes.remove(sheet)
    if not output.is_file():
        raise ExportError(f"Blender did not write {output}: is the folder writable?")
    return output


def _thumbnails(strips: Any, channel: Any, images: list[Path], top: int, thumb_h: int, sheet: tuple[int, int]) -> None:
    """One row of thumbnails from the left; a dark red box where a file is missing."""
    for col, image in enumerate(images):
        left = MARGIN + col * (THUMB_WIDTH + MARGIN)
        if image.is_file():
            _thumbnail(strips, next(channel), image, left, top, THUMB_WIDTH, thumb_h, sheet)
            continue
        box = strips.new_effect(name="missing", type="COLOR", channel=next(channel), frame_start=1, **_length_kwargs(1))
        box.color = (0.2, 0.05, 0.05)
        box.blend_type = "ALPHA_OVER"
        _place(box, left, top, THUMB_WIDTH, thumb_h, sheet, source=sheet)


def _place(strip: Any, left: int, top: int, width: int, height: int, sheet: tuple[int, int], source: tuple[int, int]) -> None:
    """Scale a strip of `source` pixels to width×height with its top-left corner at (left, top)."""
    strip.transform.scale_x = width / source[0]
    strip.transform.scale_y = height / source[1]
    strip.transform.offset_x = left + width / 2 - sheet[0] / 2
    strip.transform.offset_y = sheet[1] / 2 - (top + height / 2)


def _thumbnail(strips: Any, channel: int, image: Path, left: int, top: int, width: int, height: int,
               sheet: tuple[int, int]) -> None:
    strip = strips.new_image(name=image.stem, filepath=str(image), channel=channel, frame_start=1, fit_method="ORIGINAL")
    size = strip.elements[0].orig_width, strip.elements[0].orig_height
    if not size[0] or not size[1]:
        loaded = bpy.data.images.load(str(image), check_existing=True)
        size = tuple(loaded.size)
    _place(strip, left, top, width, height, sheet, source=(max(1, size[0]), max(1, size[1])))
    strip.blend_type = "ALPHA_OVER"


def _text(strips: Any, channel: int, text: str, *, x: int, y: int, size: int, sheet: tuple[int, int],
          wrap: int | None = None) -> None:
    strip = strips.new_effect(name="text", type="TEXT", channel=channel, frame_start=1, **_length_kwargs(1))
    strip.text = text
    strip.font_size = size
    strip.location = (x / sheet[0], 1.0 - y / sheet[1])
    strip.blend_type = "ALPHA_OVER"
    for attr, value in (("anchor_x", "LEFT"), ("anchor_y", "TOP"), ("align_x", "LEFT"), ("align_y", "TOP"),
                        ("alignment_x", "LEFT")):
        if hasattr(strip, attr):
            setattr(strip, attr, value)
    if wrap:
        strip.wrap_width = wrap / sheet[0]


# --- animatic ---------------------------------------------------------------


@contextmanager
def output_settings(scene: bpy.types.Scene) -> Iterator[None]:
    """Restore every render output setting touched by an export, even on error."""
    render = scene.render
    image = render.image_settings
    ffmpeg = render.ffmpeg
    saved: list[tuple[Any, str, Any]] = []
    for owner, names in (
        (render, ("filepath", "use_sequencer", "use_compositing", "use_file_extension", "resolution_percentage")),
        (image, ("media_type", "file_format", "color_mode")),
        (ffmpeg, ("format", "codec", "audio_codec", "audio_channels", "constant_rate_factor", "ffmpeg_preset",
                  "audio_mixrate")),
    ):
        for name in names:
            if hasattr(owner, name):
                saved.append((owner, name, getattr(owner, name)))
    try:
        yield
    finally:
        for owner, name, value in saved:
            try:
                setattr(owner, name, value)
            except (AttributeError, TypeError):
                log.warning("could not restore render setting %s", name)


def final_strip(scene: bpy.types.Scene, shot_name: str) -> Any:
    """The shot's newest finalized take strip (Finalize Take), or None when the shot has none.

    Only Finalize Take tags strips ("finalized"); "final" is how it tagged them before
    generation had draft/final tiers (.blend files saved then).
    """
    finals = [s for s in vse.strips_of_shot(scene, shot_name) if s.get("viewfinder_tier") in ("finalized", "final")]
    return max(finals, key=lambda s: s.channel) if finals else None


def unfinalized_shots(scene: bpy.types.Scene) -> list[str]:
    """Shots with takes on the Sequencer but no finalized take: the animatic shows them at generation size."""
    return [shot.name for shot in scene.viewfinder.shots
            if vse.strips_of_shot(scene, shot.name) and final_strip(scene, shot.name) is None]


@contextmanager
def final_takes_in_use(scene: bpy.types.Scene) -> Iterator[None]:
    """For the length of an export, each shot with a final take shows it (other takes muted); mutes restored."""
    saved = []
    for shot in scene.viewfinder.shots:
        final = final_strip(scene, shot.name)
        if final is None:
            continue
        for strip in vse.strips_of_shot(scene, shot.name):
            saved.append((strip, strip.mute))
            strip.mute = strip != final
    try:
        yield
    finally:
        for strip, mute in saved:
            strip.mute = mute


def export_animatic(scene: bpy.types.Scene, output: Path) -> Path:
    """Render the scene's VSE edit, with its sound, to an H.264/AAC MP4; final takes where shots have one."""
    editor = scene.sequence_editor
    if editor is None or not any(not s.mute for s in strips_of(editor)):
        raise ExportError("The Sequencer has no strips to render: generate takes first")
    output.parent.mkdir(parents=True, exist_ok=True)
    with output_settings(scene):
        render = scene.render
        render.use_sequencer = True
        render.use_compositing = False
        render.resolution_percentage = 100
        image = render.image_settings
        if hasattr(image, "media_type"):  # 5.0: choose video before the container
            image.media_type = "VIDEO"
        image.file_format = "FFMPEG"
        ffmpeg = render.ffmpeg
        ffmpeg.format = "MPEG4"
        ffmpeg.codec = "H264"
        ffmpeg.constant_rate_factor = "MEDIUM"
        ffmpeg.audio_codec = "AAC"
        ffmpeg.audio_channels = "STEREO"
        render.use_file_extension = False
        render.filepath = str(output)
        with bpy.context.temp_override(scene=scene), final_takes_in_use(scene):
            bpy.ops.render.render(animation=True, scene=scene.name)
    if not output.is_file() or output.stat().st_size == 0:
        raise ExportError(f"Blender did not write {output}: check the folder and free disk space")
    return output

