"""Scene-building helpers for Blender tests (import after bpy is available)."""

from __future__ import annotations

import types

import bpy

# The analytic scenes' map size (tests/blender/test_conditioning.py and others).
W, H = 128, 72


def add_camera(scene: bpy.types.Scene, name: str, location=(0.0, -10.0, 0.0), rotation=(1.5708, 0.0, 0.0)):
    cam = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    cam.location = location
    cam.rotation_euler = rotation
    scene.collection.objects.link(cam)
    return cam


def bind_marker(scene: bpy.types.Scene, name: str, frame: int, obj) -> bpy.types.TimelineMarker:
    marker = scene.timeline_markers.new(name, frame=frame)
    marker.camera = obj
    return marker


def use_tiny_models(settings, models) -> None:
    """Point the scene's model settings at the tiny random-weight models (``make-tiny-models``)."""
    settings.model = str(models / "sd15")
    settings.controlnet_depth = str(models / "controlnet-depth")
    settings.controlnet_pose = str(models / "controlnet-pose")


def truck_scene(models, *, size: tuple[int, int], last_frame: int, shift: float, wall: bool = False):
    """A new file: three boxes (and a wall behind them), a camera trucking ``shift`` along x from frame 1
    to ``last_frame`` bound to marker "Truck", render ``size``, tiny models. Returns the scene."""
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = size
    scene.frame_start, scene.frame_end = 1, last_frame
    for x in (-2.0, 0.0, 2.0):
        bpy.ops.mesh.primitive_cube_add(size=1.0, location=(x, 0.0, 0.0))
    if wall:
        bpy.ops.mesh.primitive_plane_add(size=40.0, location=(0.0, 4.0, 0.0), rotation=(1.5708, 0.0, 0.0))
    cam = add_camera(scene, "Cam", location=(0.0, -8.0, 0.0))
    cam.keyframe_insert("location", frame=1)
    cam.location.x += shift
    cam.keyframe_insert("location", frame=last_frame)
    bind_marker(scene, "Truck", 1, cam)
    use_tiny_models(scene.viewfinder, models)
    return scene


def take_strips(scene) -> list:
    """Every take strip of the scene (meta strips included), bottom channel first."""
    editor = scene.sequence_editor
    every = editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all
    return sorted((s for s in every if s.get("viewfinder_kind") == "take"), key=lambda s: s.channel)


def read_size(path) -> tuple[int, int]:
    """An image file's (width, height), read by Blender."""
    image = bpy.data.images.load(str(path))
    try:
        return tuple(image.size)
    finally:
        bpy.data.images.remove(image)


def engine_python() -> str | None:
    """The engine interpreter for tests: VIEWFINDER_TEST_ENGINE_PYTHON (set by the Makefile) or .venv-engine."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    candidates = [os.environ.get("VIEWFINDER_TEST_ENGINE_PYTHON", ""), str(root / ".venv-engine" / "bin" / "python")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def needs_engine():
    """pytest marks for tests that start a real engine process."""
    import pytest

    return [
        pytest.mark.engine,
        pytest.mark.skipif(engine_python() is None, reason="no engine environment: run `make test`"),
        pytest.mark.usefixtures("local_engine"),
    ]


def shot(name: str, camera, start: int = 1, end: int = 3) -> types.SimpleNamespace:
    return types.SimpleNamespace(name=name, camera=camera, frame_start=start, frame_end=end)


def add_plane(scene, name: str, size: float, location, rotation=(0.0, 0.0, 0.0)):
    mesh = bpy.data.meshes.new(name)
    s = size / 2
    mesh.from_pydata([(-s, -s, 0), (s, -s, 0), (s, s, 0), (-s, s, 0)], [], [(0, 1, 2, 3)])
    obj = bpy.data.objects.new(name, mesh)
    obj.location = location
    obj.rotation_euler = rotation
    scene.collection.objects.link(obj)
    return obj


def depth_scene(scene, ortho: bool = False):
    """Camera at the origin looking down -Z; a plane 4 units away over the left half, a backdrop at 10."""
    cam = add_camera(scene, "Cam", location=(0, 0, 0), rotation=(0, 0, 0))
    if ortho:
        cam.data.type = "ORTHO"
        cam.data.ortho_scale = 8.0
    add_plane(scene, "Near", 4.0, (-2.0, 0.0, -4.0))
    add_plane(scene, "Back", 60.0, (0.0, 0.0, -10.0))
    scene.camera = cam
    return cam
