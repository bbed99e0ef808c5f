"""Scene-building helpers for Blender tests (import after bpy is available)."""

from __future__ import annotations

import bpy


def add_camera(scene: "bpy.types.Scene", name: str, location=(0.0, -10.0, 0.0), rotation=(1.5708, 0.0, 0.0)):
    cam = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    cam.location = location
    cam.rotation_euler = rotation
    scene.collection.objects.link(cam)
    return cam


def bind_marker(scene: "bpy.types.Scene", name: str, frame: int, obj) -> "bpy.types.TimelineMarker":
    marker = scene.timeline_markers.new(name, frame=frame)
    marker.camera = obj
    return marker
