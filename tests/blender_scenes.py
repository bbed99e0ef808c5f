"""Scene-building helpers for Blender tests (import after bpy is available)."""

from __future__ import annotations

import bpy


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
