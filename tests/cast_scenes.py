"""Blender scenes with a character bible for tests: two demo characters, two shots (import after bpy)."""

from __future__ import annotations

import sys
from pathlib import Path

import bpy
import numpy as np
from blender_scenes import add_camera, bind_marker

ROOT = Path(__file__).resolve().parents[1]


def build_character(scene, name, x):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from demo.scene import build_character as demo_character

    return demo_character(scene, name, (x, 0.0, 0.0))


def save_png(path: Path, width: int, height: int, colour=(0.8, 0.2, 0.1)) -> Path:
    image = bpy.data.images.new(path.stem, width, height)
    image.pixels.foreach_set(np.tile(np.array([*colour, 1.0], np.float32), width * height))
    image.filepath_raw = str(path)
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)
    return path


def build_cast(tmp_path, models=None, name="cast.blend"):
    """Two characters, Hero (x=-3) and Stranger (x=+3); shot "Both" sees both, shot "Hero" only the hero."""
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x = scene.render.resolution_y = 100
    scene.frame_start, scene.frame_end = 1, 4
    hero = build_character(scene, "Hero", -3.0)
    stranger = build_character(scene, "Stranger", 3.0)
    both = add_camera(scene, "CamBoth", location=(0.0, -14.0, 1.0))
    close = add_camera(scene, "CamHero", location=(-3.0, -4.0, 1.0))
    close.data.lens = 50
    bind_marker(scene, "Both", 1, both)
    bind_marker(scene, "Hero", 3, close)
    settings = scene.viewfinder
    settings.long_edge = 64
    if models is not None:
        settings.model = str(models / "sd15")
        settings.controlnet_depth = str(models / "controlnet-depth")
        settings.controlnet_pose = str(models / "controlnet-pose")
        settings.ip_adapter = str(models / "ip-adapter.safetensors")
        settings.image_encoder = str(models / "image-encoder")
        settings.steps, settings.batch_size = 2, 4
    for shot in settings.shots:
        shot.prompt = "a street"
        shot.coherence = "INDEPENDENT"
    for rig, description in ((hero, "a tall woman in a red coat"), (stranger, "an old man in a grey suit")):
        bpy.ops.object.select_all(action="DESELECT")
        rig.select_set(True)
        bpy.context.view_layer.objects.active = rig
        assert bpy.ops.viewfinder.add_character() == {"FINISHED"}
        settings.characters[rig.name].description = description
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / name))
    return bpy.context.scene


def add_reference(character, path: Path) -> None:
    image = bpy.data.images.load(str(path), check_existing=True)
    character.references.add().image = image


def collect(scene, vfmod, shot_name):
    shot_job = vfmod("core.generate.shot_job")
    prefs = vfmod("preferences").get_prefs(bpy.context)
    project = vfmod("operators.common").project_of(bpy.context)
    return shot_job.collect_shot(scene, scene.viewfinder.shots[shot_name], project, prefs)
