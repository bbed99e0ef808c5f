"""Render the data passes (Z, Vector, Object Index) with Cycles on the CPU, leaving the user's settings as they were.

One Cycles render per frame at 1 sample with bounces, denoising and pixel
filtering off gives exact per-pixel data (no colour is needed). Output goes to
an uncompressed multi-layer EXR in a temporary folder, never the user's output
path; `exr.read_exr` reads it back.

`RenderGuard` snapshots every setting it changes and restores it in `__exit__`,
also on errors and Esc, so the user's file is identical before and after.

Runs on Blender's main thread (bpy).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from .exr import read_exr

log = logging.getLogger(__name__)


class RenderGuard:
    """Set attributes for the duration of a `with` block; restore them all afterwards, in reverse order."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def remember(self, owner: Any, *names: str) -> None:
        """Save values before changing any of them: setting one may change others (media_type → file_format)."""
        for name in names:
            if owner is not None and hasattr(owner, name) and not self._has(owner, name):
                self._saved.append((owner, name, getattr(owner, name)))

    def _has(self, owner: Any, name: str) -> bool:
        return any(o == owner and n == name for o, n, _v in self._saved)

    def set(self, owner: Any, name: str, value: Any) -> None:
        if owner is None or not hasattr(owner, name):
            return  # a setting this Blender version does not have
        self.remember(owner, name)
        try:
            setattr(owner, name, value)
        except (TypeError, ValueError, AttributeError) as exc:
            log.debug("could not set %s.%s: %s", owner, name, exc)

    def __enter__(self) -> RenderGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        saved, self._saved = self._saved[::-1], []
        # Two passes: some values are only valid once another is back (color_depth '8' needs
        # file_format 'PNG' first), and a setting that refused its value in pass one takes it in pass two.
        for attempt in range(2):
            for owner, name, value in saved:
                try:
                    if getattr(owner, name) != value:
                        setattr(owner, name, value)
                except Exception:  # restore everything else even if one value does not apply
                    if attempt == 1:
                        log.exception("could not restore %s.%s", owner, name)


def view_layer_of(scene: bpy.types.Scene) -> bpy.types.ViewLayer:
    """The view layer we render: the window's one if it belongs to the scene, else the first enabled one."""
    layer = getattr(bpy.context, "view_layer", None)
    if layer is not None and scene.view_layers.get(layer.name) == layer:
        return layer
    return next((vl for vl in scene.view_layers if vl.use), scene.view_layers[0])


def configure(guard: RenderGuard, scene: bpy.types.Scene, camera: bpy.types.Object, width: int, height: int) -> bpy.types.ViewLayer:
    """Switch the scene to the minimal data-pass render. Every change goes through `guard`."""
    render = scene.render
    guard.set(scene, "camera", camera)
    guard.set(render, "engine", "CYCLES")
    for name, value in (
        ("resolution_x", width),
        ("resolution_y", height),
        ("resolution_percentage", 100),
        ("pixel_aspect_x", 1.0),
        ("pixel_aspect_y", 1.0),
        ("use_border", False),
        ("use_crop_to_border", False),
        ("film_transparent", True),
        ("use_motion_blur", False),  # the vector pass exists only without motion blur
        ("use_compositing", False),
        ("use_sequencer", False),  # else VSE strips would replace the render
        ("use_multiview", False),
        ("use_persistent_data", True),  # keep the BVH between frames
        ("use_file_extension", True),
        ("use_overwrite", True),
        ("use_placeholder", False),
        ("use_stamp", False),
    ):
        guard.set(render, name, value)
    guard.set(render, "filepath", render.filepath)  # render_frame points it at the temporary folder
    image = render.image_settings
    guard.remember(image, "media_type", "file_format", "color_depth", "exr_codec", "use_exr_interleave", "color_mode")
    guard.set(image, "media_type", "MULTI_LAYER_IMAGE")  # 5.0+: file formats are grouped by media type
    guard.set(image, "file_format", "OPEN_EXR_MULTILAYER")
    guard.set(image, "color_depth", "32")
    guard.set(image, "exr_codec", "NONE")  # exr.read_exr reads uncompressed files only
    guard.set(image, "use_exr_interleave", True)  # 5.0+: one part, not a multi-part file
    guard.set(image, "color_mode", "RGBA")

    cycles = scene.cycles
    for name, value in (
        ("device", "CPU"),
        ("samples", 1),
        ("use_adaptive_sampling", False),
        ("use_denoising", False),
        ("max_bounces", 0),
        ("diffuse_bounces", 0),
        ("glossy_bounces", 0),
        ("transmission_bounces", 0),
        ("volume_bounces", 0),
        ("transparent_max_bounces", 0),
        ("caustics_reflective", False),
        ("caustics_refractive", False),
        ("use_animated_seed", False),
        ("seed", 0),
        # A near-zero filter puts the one sample at the pixel center: exact, repeatable data passes.
        ("filter_width", 0.01),
        ("use_camera_cull", False),
        ("use_distance_cull", False),
    ):
        guard.set(cycles, name, value)

    layer = view_layer_of(scene)
    for other in scene.view_layers:
        guard.set(other, "use", other == layer)
    for name, value in (
        ("use_pass_combined", True),
        ("use_pass_z", True),
        ("use_pass_vector", True),
        ("use_pass_object_index", True),
        ("samples", 0),
        ("material_override", None),
    ):
        guard.set(layer, name, value)
    guard.set(getattr(layer, "cycles", None), "use_denoising", False)
    return layer


def render_frame(scene: bpy.types.Scene, layer: bpy.types.ViewLayer, frame: int, folder: Path) -> dict[str, np.ndarray]:
    """Render one frame's passes; returns {"z", "vector" (H, W, 4), "index"} with row 0 at the top.

    The caller holds a RenderGuard with `configure` applied.
    """
    scene.frame_set(frame)
    path = folder / f"{frame:04d}"
    scene.render.filepath = str(path)  # restored by the guard: configure() saved it
    result = bpy.ops.render.render(write_still=True, scene=scene.name, layer=layer.name)
    if result != {"FINISHED"}:
        raise RuntimeError(f"Cycles did not finish rendering frame {frame}: {result}")
    exr_path = path.with_suffix(".exr")
    channels = read_exr(exr_path)
    exr_path.unlink()
    prefix = f"{layer.name}."

    def channel(*names: str) -> np.ndarray:
        for name in names:
            if prefix + name in channels:
                return channels[prefix + name]
        raise RuntimeError(f"pass {names[0]} missing from the render (got {sorted(channels)})")

    return {
        "z": channel("Depth.Z"),
        "vector": np.stack([channel(f"Vector.{c}") for c in "XYZW"], axis=-1),
        # The pass is "IndexOB" before 5.0 and "Object Index" from 5.0.
        "index": np.rint(channel("IndexOB.X", "Object Index.X")).astype(np.int32),
    }
