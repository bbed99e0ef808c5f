"""A random toy-world scene in Blender: shapes and mannequins on a ground under a sky.

`build(scene, rng, things, ground, sky)` fills an empty scene; `still_cameras` and
`moving_camera` add the shot's camera. Objects are meshes built from bmesh (no operators,
so it runs headless and fast) with box-projected UVs, so a pattern has the same size in the
world on every shape; the mannequin is the demo's rig (Rigify DEF- bones, a boxy body), in a
random pose, so the pose maps come from the same code as a user's characters.

The colour render is Workbench (studio light, texture colours, world colour behind): fast,
noise-free and deterministic. The control maps come from `core.conditioning.render_shot`.

Runs on Blender's main thread.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import bmesh
import bpy
import numpy as np
from mathutils import Vector

from engine.testing.toy.vocab import COLOURS, GROUNDS, SKIES, Thing

# World units per pattern cell: a checker square or a stripe.
CELL = 0.25


@dataclass
class Placed:
    """A thing in the scene: its vocabulary entry and the object that owns its mask."""

    thing: Thing
    owner: Any  # the mesh object, or the armature of a person
    location: Vector
    height: float


def _image(name: str, pixels: np.ndarray) -> Any:
    """A packed-in-memory image from an (h, w, 3) linear float array."""
    h, w, _ = pixels.shape
    image = bpy.data.images.new(name, width=w, height=h, alpha=False, float_buffer=True)
    rgba = np.ones((h, w, 4), np.float32)
    rgba[..., :3] = pixels
    image.pixels.foreach_set(rgba.ravel())
    return image


def pattern_pixels(colour: tuple[float, float, float], pattern: str) -> np.ndarray:
    """8x8 cells of a pattern; the second tone is the colour darkened (grey for black)."""
    base = np.array(colour, np.float32)
    dark = np.full(3, 0.25, np.float32) if max(colour) < 0.05 else base * 0.22
    yy, xx = np.mgrid[0:8, 0:8]
    if pattern == "plain":
        mask = np.zeros((8, 8), bool)
    elif pattern == "striped":
        mask = (xx % 2) == 1
    else:
        mask = ((xx + yy) % 2) == 1
    return np.where(mask[..., None], dark, base)


def _material(name: str, pixels: np.ndarray, interpolation: str = "Closest") -> Any:
    material = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0):
        material.use_nodes = True
    nodes = material.node_tree.nodes
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = _image(name, pixels)
    tex.interpolation = interpolation
    bsdf = next(n for n in nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    material.node_tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    nodes.active = tex  # Workbench's texture colour reads the active image node
    material.diffuse_color = (*pixels.reshape(-1, 3).mean(axis=0), 1.0)
    return material


def box_uvs(mesh: Any, scale: float = 1.0 / (8 * CELL)) -> None:
    """UVs by box projection in object space: each face maps its two most spread axes."""
    uv_layer = mesh.uv_layers.new(name="UVMap")
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    uv = np.empty((len(mesh.loops), 2), np.float32)
    for poly in mesh.polygons:
        axis = int(np.argmax(np.abs(np.array(poly.normal))))
        keep = [a for a in range(3) if a != axis]
        for li in range(poly.loop_start, poly.loop_start + poly.loop_total):
            uv[li] = co[mesh.loops[li].vertex_index][keep] * scale
    uv_layer.data.foreach_set("uv", uv.ravel())


def _torus(bm: Any, major: float = 0.38, minor: float = 0.14, n: int = 20, m: int = 10) -> None:
    verts = []
    for i in range(n):
        a = 2 * math.pi * i / n
        for j in range(m):
            b = 2 * math.pi * j / m
            r = major + minor * math.cos(b)
            verts.append(bm.verts.new((r * math.cos(a), r * math.sin(a), minor * math.sin(b))))
    for i in range(n):
        for j in range(m):
            bm.faces.new((verts[i * m + j], verts[((i + 1) % n) * m + j],
                          verts[((i + 1) % n) * m + (j + 1) % m], verts[i * m + (j + 1) % m]))


def shape_mesh(shape: str, name: str) -> tuple[Any, float]:
    """A unit-ish mesh standing on z=0, and its height."""
    bm = bmesh.new()
    if shape == "cube":
        bmesh.ops.create_cube(bm, size=0.9)
        height = 0.9
    elif shape == "sphere":
        bmesh.ops.create_uvsphere(bm, u_segments=20, v_segments=10, radius=0.5)
        height = 1.0
    elif shape == "cylinder":
        bmesh.ops.create_cone(bm, cap_ends=True, segments=20, radius1=0.4, radius2=0.4, depth=1.1)
        height = 1.1
    elif shape == "cone":
        bmesh.ops.create_cone(bm, cap_ends=True, segments=20, radius1=0.5, radius2=0.0, depth=1.1)
        height = 1.1
    elif shape == "torus":
        _torus(bm)
        bmesh.ops.rotate(bm, verts=bm.verts, cent=(0, 0, 0), matrix=_rot_x(math.pi / 2))
        height = 1.04
    else:
        raise ValueError(f"not a mesh shape: {shape}")
    lowest = min(v.co.z for v in bm.verts)
    bmesh.ops.translate(bm, verts=bm.verts, vec=(0, 0, -lowest))
    mesh = bpy.data.meshes.new(name)
    bm.to_mesh(mesh)
    bm.free()
    for poly in mesh.polygons:
        poly.use_smooth = shape in ("sphere", "torus")
    box_uvs(mesh)
    return mesh, height


def _rot_x(angle: float) -> Any:
    from mathutils import Matrix

    return Matrix.Rotation(angle, 3, "X")


def random_pose(rig: Any, rng: random.Random, frame: int | None = None) -> None:
    """Bend the mannequin's limbs at random, within what a body does (keyframed at `frame` if given)."""
    bends = {
        "DEF-spine.001": ((-0.2, 0.2), (-0.15, 0.15)),
        "DEF-upper_arm.L": ((-1.3, 1.3), (-0.2, 1.2)), "DEF-upper_arm.R": ((-1.3, 1.3), (-1.2, 0.2)),
        "DEF-forearm.L": ((-1.4, 0.0), (0.0, 0.0)), "DEF-forearm.R": ((-1.4, 0.0), (0.0, 0.0)),
        "DEF-thigh.L": ((-0.8, 0.7), (-0.1, 0.3)), "DEF-thigh.R": ((-0.8, 0.7), (-0.3, 0.1)),
        "DEF-shin.L": ((0.0, 1.3), (0.0, 0.0)), "DEF-shin.R": ((0.0, 1.3), (0.0, 0.0)),
    }
    for name, ((x0, x1), (z0, z1)) in bends.items():
        bone = rig.pose.bones[name]
        bone.rotation_mode = "XYZ"
        bone.rotation_euler = (rng.uniform(x0, x1), 0.0, rng.uniform(z0, z1))
        if frame is not None:
            bone.keyframe_insert("rotation_euler", frame=frame)


def _person(scene: Any, name: str, material: Any, build_character: Any) -> tuple[Any, float]:
    rig = build_character(scene, name, (0.0, 0.0, 0.0))
    for child in rig.children:
        if child.type == "MESH":
            box_uvs(child.data)
            child.data.materials.append(material)
    return rig, 1.86


def build(scene: Any, rng: random.Random, things: list[Thing], ground: str, sky: str,
          build_character: Any) -> list[Placed]:
    """Fill `scene` (empty) with the ground, the sky and `things` placed apart near the origin."""
    world = bpy.data.worlds.new("Sky")
    world.color = SKIES[sky]
    scene.world = world
    a, b, kind = GROUNDS[ground]
    if kind == "tiles":
        yy, xx = np.mgrid[0:8, 0:8]
        px = np.where((((xx // 2) + (yy // 2)) % 2 == 1)[..., None], np.array(b), np.array(a)).astype(np.float32)
        ground_scale = 1.0 / 8.0  # 4 tiles of 1 unit... per 8 units
    else:
        noise = np.random.default_rng(rng.randrange(2**31)).random((32, 32))[..., None]
        px = (np.array(a) * (1 - noise) + np.array(b) * noise).astype(np.float32)
        ground_scale = 1.0 / 6.0
    bm = bmesh.new()
    bmesh.ops.create_grid(bm, x_segments=1, y_segments=1, size=40.0)
    mesh = bpy.data.meshes.new("Ground")
    bm.to_mesh(mesh)
    bm.free()
    box_uvs(mesh, scale=ground_scale)
    mesh.materials.append(_material(f"ground-{ground}", px, "Linear" if kind != "tiles" else "Closest"))
    ground_obj = bpy.data.objects.new("Ground", mesh)
    scene.collection.objects.link(ground_obj)

    placed: list[Placed] = []
    spots: list[Vector] = []
    for i, thing in enumerate(things):
        for _ in range(50):
            spot = Vector((rng.uniform(-2.6, 2.6), rng.uniform(-2.6, 2.6), 0.0))
            if all((spot - other).length > 1.5 for other in spots):
                break
        spots.append(spot)
        material = _material(f"{thing.colour}-{thing.pattern}-{i}", pattern_pixels(COLOURS[thing.colour], thing.pattern))
        name = f"Thing.{i}.{thing.shape}"
        if thing.shape == "person":
            owner, height = _person(scene, name, material, build_character)
            random_pose(owner, rng)
            scale = rng.uniform(0.85, 1.1)
        else:
            mesh, height = shape_mesh(thing.shape, name)
            mesh.materials.append(material)
            owner = bpy.data.objects.new(name, mesh)
            scene.collection.objects.link(owner)
            scale = rng.uniform(0.8, 1.35)
        owner.location = spot
        owner.rotation_euler.z = rng.uniform(-math.pi, math.pi)
        owner.scale = (scale, scale, scale)
        placed.append(Placed(thing, owner, spot, height * scale))
    return placed


def _camera(scene: Any, lens: float) -> Any:
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    cam.data.lens = lens
    cam.data.clip_start = 0.1
    cam.data.clip_end = 200.0
    cam.rotation_mode = "QUATERNION"
    scene.collection.objects.link(cam)
    scene.camera = cam
    return cam


def _aim(cam: Any, location: Vector, target: Vector, frame: int) -> None:
    cam.location = location
    cam.rotation_quaternion = (target - location).to_track_quat("-Z", "Y")
    cam.keyframe_insert("location", frame=frame)
    cam.keyframe_insert("rotation_quaternion", frame=frame)


def _centre(placed: list[Placed]) -> Vector:
    if not placed:
        return Vector((0.0, 0.0, 0.5))
    c = sum((p.location for p in placed), Vector()) / len(placed)
    return Vector((c.x, c.y, 0.55))


def still_cameras(scene: Any, rng: random.Random, placed: list[Placed], frames: int) -> Any:
    """One camera that jumps to a new random view each frame (constant keys): `frames` stills of one layout."""
    prefs = bpy.context.preferences.edit
    saved = prefs.keyframe_new_interpolation_type
    prefs.keyframe_new_interpolation_type = "CONSTANT"
    try:
        cam = _camera(scene, 35.0)
        centre = _centre(placed)
        for frame in range(1, frames + 1):
            cam.data.lens = rng.uniform(26.0, 50.0)
            cam.data.keyframe_insert("lens", frame=frame)
            azimuth = rng.uniform(-math.pi, math.pi)
            elevation = math.radians(rng.uniform(4.0, 35.0))
            distance = rng.uniform(3.0, 6.0) * cam.data.lens / 35.0
            offset = Vector((math.cos(azimuth) * math.cos(elevation), math.sin(azimuth) * math.cos(elevation),
                             math.sin(elevation))) * distance
            target = centre + Vector((rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(-0.2, 0.4)))
            _aim(cam, target + offset + Vector((0, 0, 0.3)), target, frame)
            for p in placed:
                if p.thing.shape == "person" and frame > 1:
                    random_pose(p.owner, rng, frame)
                elif p.thing.shape == "person":
                    random_pose(p.owner, rng, 1)
    finally:
        prefs.keyframe_new_interpolation_type = saved
    return cam


MOVES = ("orbit", "dolly", "pan", "crane", "truck")


def moving_camera(scene: Any, rng: random.Random, placed: list[Placed], frames: int, move: str) -> Any:
    """A smooth camera move over `frames` frames (keys every 6 frames, Bezier in between)."""
    cam = _camera(scene, rng.uniform(30.0, 45.0))
    centre = _centre(placed)
    azimuth0 = rng.uniform(-math.pi, math.pi)
    elevation = math.radians(rng.uniform(8.0, 25.0))
    distance = rng.uniform(4.5, 6.5)
    for frame in range(1, frames + 1, 6):
        u = (frame - 1) / max(1, frames - 1)
        az, dist, el, target = azimuth0, distance, elevation, centre.copy()
        if move == "orbit":
            az = azimuth0 + u * math.radians(50.0)
        elif move == "dolly":
            dist = distance * (1.0 - 0.35 * u)
        elif move == "pan":
            side = Vector((-math.sin(azimuth0), math.cos(azimuth0), 0.0))
            target = centre + side * (u - 0.5) * 2.0
        elif move == "crane":
            el = elevation + u * math.radians(20.0)
        elif move == "truck":
            side = Vector((-math.sin(azimuth0), math.cos(azimuth0), 0.0))
            target = centre + side * (u - 0.5) * 1.6
        offset = Vector((math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el))) * dist
        location = target + offset
        if move == "truck":
            location = centre + offset + side * (u - 0.5) * 1.6
        _aim(cam, location, target, frame)
    return cam
