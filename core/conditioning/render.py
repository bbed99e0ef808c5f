"""Render the data passes (Z, Vector, Object Index, and Normal when asked) with Cycles on the CPU, leaving the user's settings as they were.

One Cycles render per frame at 1 sample with bounces, denoising and pixel
filtering off gives exact per-pixel data (no colour is needed). Almost all of a
frame's cost is tracing and shading its pixels (the per-frame sync is a few
milliseconds with persistent data), so the scene renders with one flat material
that has no closures: no shading, no light sampling, the same Z, Vector and
Object Index to the bit. Only where a material changes which surface those
passes see (true displacement, holdout; see `why_materials_matter`) do the
user's own materials render, at the old cost. Output goes to
an uncompressed multi-layer EXR in a temporary folder, never the user's output
path; `exr.read_exr` reads it back.

`RenderGuard` snapshots every setting it changes and restores it in `__exit__`,
also on errors and Esc, so the user's file is identical before and after.

Runs on Blender's main thread (bpy).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
        self._cleanups: list[Callable[[], None]] = []

    def on_exit(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` once every setting is back (e.g. remove a datablock a setting pointed to)."""
        self._cleanups.append(cleanup)

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
        cleanups, self._cleanups = self._cleanups[::-1], []
        for cleanup in cleanups:
            try:
                cleanup()
            except Exception:
                log.exception("cleanup after the data-pass render failed")


def view_layer_of(scene: bpy.types.Scene) -> bpy.types.ViewLayer:
    """The view layer we render: the window's one if it belongs to the scene, else the first enabled one."""
    layer = getattr(bpy.context, "view_layer", None)
    if layer is not None and scene.view_layers.get(layer.name) == layer:
        return layer
    return next((vl for vl in scene.view_layers if vl.use), scene.view_layers[0])


OVERRIDE_NAME = "Viewfinder Data Passes"


def _nodes(tree: Any, seen: set[int]) -> Any:
    """Every node of a node tree, node groups included (each group once)."""
    if tree is None or tree.as_pointer() in seen:
        return
    seen.add(tree.as_pointer())
    for node in tree.nodes:
        yield node
        if getattr(node, "node_tree", None) is not None:
            yield from _nodes(node.node_tree, seen)


def _material_reason(material: Any) -> str | None:
    tree = getattr(material, "node_tree", None)
    if tree is None or (bpy.app.version < (5, 0) and not material.use_nodes):
        return None  # the plain diffuse colour (from 5.0 materials always use their nodes)
    # 4.1+ has the method on the material, 4.0 and before on material.cycles.
    method = getattr(material, "displacement_method", None) or getattr(material.cycles, "displacement_method", "BUMP")
    for node in _nodes(tree, set()):
        if node.bl_idname == "ShaderNodeHoldout":
            return f"material '{material.name}' has a Holdout shader"
        if node.bl_idname == "ShaderNodeOutputMaterial" and method != "BUMP":
            displacement = node.inputs.get("Displacement")
            if displacement is not None and displacement.is_linked:
                return f"material '{material.name}' displaces its surface"
    return None


def why_materials_matter(scene: bpy.types.Scene) -> str | None:
    """Why the data passes need the scene's own materials (a reason to show), or None when a flat one is exact.

    With no transparent bounces, Z and Object Index are those of the first surface a camera
    ray hits whatever its shader (transparent, alpha, glass, volume or ray portal alike), so a
    flat material gives the same values. Two kinds of shading change them: true displacement
    moves the surface, and a holdout removes it from the passes. The Vector pass of a
    see-through surface is scaled by its opacity with its own shader (0 for alpha 0 over
    a moving object); the flat material gives it the motion its Z and mask already show.
    Materials that geometry nodes may assign are not in the slots, so with a geometry-nodes
    modifier every material in the file is checked.
    """
    materials: dict[str, Any] = {}
    every = False
    for obj in scene.objects:
        if obj.type == "VOLUME":
            return f"'{obj.name}' is a volume object"
        every = every or any(mod.type == "NODES" for mod in getattr(obj, "modifiers", ()))
        for slot in getattr(obj, "material_slots", ()):
            if slot.material is not None:
                materials[slot.material.name_full] = slot.material
    if every:
        materials.update((m.name_full, m) for m in bpy.data.materials)
    for material in materials.values():
        reason = _material_reason(material)
        if reason is not None:
            return reason
    return None


def _flat_material() -> bpy.types.Material:
    """A material with an output node and nothing else: no closures, so Cycles neither shades nor samples lights."""
    material = bpy.data.materials.new(OVERRIDE_NAME)
    if bpy.app.version < (5, 0):
        material.use_nodes = True  # from 5.0 materials always have nodes
    material.node_tree.nodes.clear()
    material.node_tree.nodes.new("ShaderNodeOutputMaterial")
    return material


def configure(guard: RenderGuard, scene: bpy.types.Scene, camera: bpy.types.Object, width: int, height: int,
              *, normal: bool = False) -> bpy.types.ViewLayer:
    """Switch the scene to the minimal data-pass render. Every change goes through `guard`.

    ``normal`` adds Cycles' Normal pass (normal and line-art maps): one more pass of the same
    render, not another render.
    """
    _configure_output(guard, scene, camera, width, height)
    _configure_cycles(guard, scene)
    return _configure_layer(guard, scene, normal)


def _configure_output(guard: RenderGuard, scene: bpy.types.Scene, camera: bpy.types.Object, width: int,
                      height: int) -> None:
    """The camera, size and output: a 32-bit multilayer EXR of the data passes, nothing else."""
    render = scene.render
    guard.set(scene, "camera", camera)
    guard.set(scene, "world", None)  # the background adds nothing to the data passes; no world light to build
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


def _configure_cycles(guard: RenderGuard, scene: bpy.types.Scene) -> None:
    """Cycles at one centred sample, no bounces and no denoising: exact, repeatable data passes."""
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
        ("use_guiding", False),  # path guiding trains on shading the data passes do not need
        ("use_light_tree", False),  # no light is sampled for the data passes: nothing to build per frame
    ):
        guard.set(cycles, name, value)


def _configure_layer(guard: RenderGuard, scene: bpy.types.Scene, normal: bool) -> bpy.types.ViewLayer:
    """The one view layer rendered, its Z, vector and object-index (and normal) passes, and the flat material."""
    layer = view_layer_of(scene)
    for other in scene.view_layers:
        guard.set(other, "use", other == layer)
    for name, value in (
        ("use_pass_combined", True),
        ("use_pass_z", True),
        ("use_pass_vector", True),
        ("use_pass_object_index", True),
        ("use_pass_normal", normal),
        ("samples", 0),
    ):
        guard.set(layer, name, value)
    guard.set(getattr(layer, "cycles", None), "use_denoising", False)
    reason = why_materials_matter(scene)
    if reason is None:
        flat = _flat_material()
        guard.on_exit(lambda: bpy.data.materials.remove(flat))
        guard.set(layer, "material_override", flat)
    else:
        log.info("control maps render with the scene's materials (slower): %s", reason)
        guard.set(layer, "material_override", None)
    return layer


def render_exr(scene: bpy.types.Scene, layer: bpy.types.ViewLayer, frame: int, folder: Path) -> Path:
    """Render one frame's passes into `folder`/NNNN.exr and return the file. Main thread.

    The caller holds a RenderGuard with `configure` applied. Blender releases the GIL while Cycles
    renders, so a worker thread can finish the previous frame's maps meanwhile (pipeline.py).
    """
    scene.frame_set(frame)
    path = folder / f"{frame:04d}"
    scene.render.filepath = str(path)  # restored by the guard: configure() saved it
    result = bpy.ops.render.render(write_still=True, scene=scene.name, layer=layer.name)
    if result != {"FINISHED"}:
        raise RuntimeError(f"Cycles did not finish rendering frame {frame}: {result}")
    return path.with_suffix(".exr")


def read_passes(exr_path: Path, layer_name: str) -> dict[str, np.ndarray]:
    """{"z", "vector" (H, W, 4), "index"[, "normal" (3, H, W)]} of a rendered frame, row 0 at the top; the
    file is deleted. Plain numpy: any thread."""
    channels = read_exr(exr_path)
    exr_path.unlink()
    prefix = f"{layer_name}."

    def channel(*names: str) -> np.ndarray:
        for name in names:
            if prefix + name in channels:
                return channels[prefix + name]
        raise RuntimeError(f"pass {names[0]} missing from the render (got {sorted(channels)})")

    passes = {
        "z": channel("Depth.Z"),
        "vector": np.stack([channel(f"Vector.{c}") for c in "XYZW"], axis=-1),
        # The pass is "IndexOB" before 5.0 and "Object Index" from 5.0.
        "index": np.rint(channel("IndexOB.X", "Object Index.X")).astype(np.int32),
    }
    if prefix + "Normal.X" in channels:  # world space, the shading normal of the first surface hit
        passes["normal"] = np.stack([channels[prefix + f"Normal.{c}"] for c in "XYZ"])  # (3, H, W)
    return passes


def render_frame(scene: bpy.types.Scene, layer: bpy.types.ViewLayer, frame: int, folder: Path) -> dict[str, np.ndarray]:
    """`render_exr` then `read_passes`: one frame's passes, in one call. Main thread."""
    return read_passes(render_exr(scene, layer, frame, folder), layer.name)


def depsgraph() -> Any:
    """The evaluated depsgraph of the current frame (the objects as rendered)."""
    return bpy.context.evaluated_depsgraph_get()


def camera_at_frame(camera: bpy.types.Object, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(world matrix, projection matrix) of the camera on the current frame, as numpy 4x4 arrays.

    The projection is Blender's own for this resolution (sensor fit, shift, orthographic scale),
    so pixels map to rays exactly as Cycles cast them.
    """
    depsgraph = bpy.context.evaluated_depsgraph_get()
    projection = camera.calc_matrix_camera(depsgraph, x=width, y=height)
    return np.array(camera.matrix_world, dtype=np.float64), np.array(projection, dtype=np.float64)
