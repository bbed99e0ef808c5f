"""The demo film's scene: a small set, two walking characters, three shots with different camera moves.

`build_demo_scene(scene)` fills an empty scene in well under a second: meshes
from vertex lists, an armature with Rigify deform-bone names (`DEF-…`, hands
included) skinning a boxy body through an Armature modifier, keyframed bone
rotations for a walk, and three cameras bound to the markers "Dolly" (1),
"Pan" (25) and "Orbit" (49). 24 fps, frames 1–72, 1920×1080.

Two characters: "Hero" (the traveller) walks +X along y=0; "Stranger" walks
the other way a little further back (y=1.2), so in the Pan shot (25–48) the
two pass each other around frame 36, the stranger briefly behind the traveller.

Used by `make demo` (demo/run_demo.py) and benchmarks/bench_conditioning.py.
Runs on Blender's main thread.
"""

from __future__ import annotations

import math
from typing import Any

import bpy
from mathutils import Matrix, Vector

# (name, head, tail, parent): the character faces -Y, its left is +X (Blender's meta-rig convention).
_SPINE = [
    ("DEF-spine", (0, 0, 0.95), (0, 0, 1.1), None),
    ("DEF-spine.001", (0, 0, 1.1), (0, 0, 1.25), "DEF-spine"),
    ("DEF-spine.002", (0, 0, 1.25), (0, 0, 1.38), "DEF-spine.001"),
    ("DEF-spine.003", (0, 0, 1.38), (0, 0, 1.5), "DEF-spine.002"),
    ("DEF-spine.004", (0, 0, 1.5), (0, 0, 1.58), "DEF-spine.003"),
    ("DEF-spine.005", (0, 0, 1.58), (0, 0, 1.64), "DEF-spine.004"),
    ("DEF-spine.006", (0, 0, 1.64), (0, 0, 1.86), "DEF-spine.005"),
    ("DEF-nose", (0, -0.09, 1.74), (0, -0.12, 1.71), "DEF-spine.006"),
]


def _side_bones(s: str, x: float) -> list[tuple[str, tuple, tuple, str | None]]:
    bones = [
        (f"DEF-eye.{s}", (0.035 * x, -0.08, 1.77), (0.035 * x, -0.1, 1.77), "DEF-spine.006"),
        (f"DEF-ear.{s}", (0.085 * x, 0.0, 1.74), (0.095 * x, 0.02, 1.78), "DEF-spine.006"),
        (f"DEF-shoulder.{s}", (0.03 * x, 0, 1.47), (0.19 * x, 0, 1.47), "DEF-spine.003"),
        (f"DEF-upper_arm.{s}", (0.19 * x, 0, 1.46), (0.26 * x, 0.02, 1.18), f"DEF-shoulder.{s}"),
        (f"DEF-forearm.{s}", (0.26 * x, 0.02, 1.18), (0.3 * x, -0.04, 0.94), f"DEF-upper_arm.{s}"),
        (f"DEF-hand.{s}", (0.3 * x, -0.04, 0.94), (0.31 * x, -0.05, 0.86), f"DEF-forearm.{s}"),
        (f"DEF-thigh.{s}", (0.1 * x, 0, 0.95), (0.1 * x, -0.01, 0.52), "DEF-spine"),
        (f"DEF-shin.{s}", (0.1 * x, -0.01, 0.52), (0.1 * x, 0.02, 0.09), f"DEF-thigh.{s}"),
        (f"DEF-foot.{s}", (0.1 * x, 0.02, 0.09), (0.1 * x, -0.12, 0.02), f"DEF-shin.{s}"),
    ]
    # Fingers: four segments' worth of joints per finger, fanned around the hand.
    for i, finger in enumerate(("thumb", "f_index", "f_middle", "f_ring", "f_pinky")):
        spread = (i - 2) * 0.012
        base = Vector((0.31 * x + spread * x, -0.05 - (0.02 if finger == "thumb" else 0.0), 0.86))
        step = Vector((0.004 * x, -0.004, -0.022))
        parent = f"DEF-hand.{s}"
        for j in range(1, 4):
            name = f"DEF-{finger}.0{j}.{s}"
            head = base + step * (j - 1)
            bones.append((name, tuple(head), tuple(head + step), parent))
            parent = name
    return bones


def _box(center: tuple[float, float, float], size: tuple[float, float, float]) -> tuple[list, list]:
    cx, cy, cz = center
    sx, sy, sz = (s / 2 for s in size)
    verts = [(cx + dx * sx, cy + dy * sy, cz + dz * sz) for dz in (-1, 1) for dy in (-1, 1) for dx in (-1, 1)]
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return verts, faces


def _mesh_object(scene: Any, name: str, verts: list, faces: list) -> Any:
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts, [], faces)
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    return obj


def _build_set(scene: Any) -> None:
    _mesh_object(scene, "Ground", [(-30, -30, 0), (30, -30, 0), (30, 30, 0), (-30, 30, 0)], [(0, 1, 2, 3)])
    for i, (x, y, w, d, h) in enumerate(((-6, 6, 3, 3, 5), (5, 8, 4, 3, 7), (-9, -2, 2.5, 4, 3), (9, 0, 3, 3, 4))):
        verts, faces = _box((x, y, h / 2), (w, d, h))
        _mesh_object(scene, f"Building.{i + 1:02d}", verts, faces)


def build_character(scene: Any, name: str = "Hero", location: tuple[float, float, float] = (0, 0, 0)) -> Any:
    """An armature with DEF- bones and a boxy body skinned to it; returns the armature object."""
    data = bpy.data.armatures.new(name)
    rig = bpy.data.objects.new(name, data)
    rig.location = location
    scene.collection.objects.link(rig)
    bones = _SPINE + _side_bones("L", 1.0) + _side_bones("R", -1.0)
    view_layer = bpy.context.view_layer
    view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    for bone_name, head, tail, _parent in bones:
        edit = data.edit_bones.new(bone_name)
        edit.head, edit.tail = head, tail
    for bone_name, _h, _t, parent in bones:
        if parent:
            data.edit_bones[bone_name].parent = data.edit_bones[parent]
    bpy.ops.object.mode_set(mode="OBJECT")

    # Body: one box per limb bone, each vertex weighted fully to its bone.
    verts: list = []
    faces: list = []
    groups: dict[str, list[int]] = {}
    thick = {"spine": 0.26, "upper_arm": 0.09, "forearm": 0.08, "thigh": 0.14, "shin": 0.1, "foot": 0.09}
    for bone_name, head, tail, _parent in bones:
        key = next((k for k in thick if bone_name.startswith(f"DEF-{k}")), None)
        if key is None and bone_name != "DEF-spine.006":
            continue
        h, t = Vector(head), Vector(tail)
        size = 0.2 if bone_name == "DEF-spine.006" else thick[key]  # type: ignore[index]
        length = (t - h).length
        box_v, box_f = _box((0, 0, 0), (size, size * 0.7, length))
        basis = (t - h).normalized().to_track_quat("Z", "Y").to_matrix().to_4x4()
        place = Matrix.Translation((h + t) / 2) @ basis
        offset = len(verts)
        verts += [tuple(place @ Vector(v)) for v in box_v]
        faces += [tuple(i + offset for i in f) for f in box_f]
        groups[bone_name] = list(range(offset, offset + 8))
    body = _mesh_object(scene, f"{name}.Body", verts, faces)
    for bone_name, indices in groups.items():
        body.vertex_groups.new(name=bone_name).add(indices, 1.0, "REPLACE")
    body.parent = rig
    body.modifiers.new("Armature", "ARMATURE").object = rig
    return rig


def _animate_walk(rig: Any, start: int, end: int, travel: tuple[float, float]) -> None:
    """Swing legs and arms at two steps a second while the rig crosses `travel` (x, y) metres."""
    for bone in rig.pose.bones:
        bone.rotation_mode = "XYZ"
    x0, y0 = rig.location.x, rig.location.y
    for frame in range(start, end + 1, 3):
        phase = (frame - start) / 12.0 * math.pi
        swing = math.sin(phase) * 0.5
        for side, sign in (("L", 1.0), ("R", -1.0)):
            rig.pose.bones[f"DEF-thigh.{side}"].rotation_euler.x = sign * swing
            rig.pose.bones[f"DEF-shin.{side}"].rotation_euler.x = max(0.0, -sign * swing) * 1.2
            rig.pose.bones[f"DEF-upper_arm.{side}"].rotation_euler.x = -sign * swing * 0.8
            for bone_name in (f"DEF-thigh.{side}", f"DEF-shin.{side}", f"DEF-upper_arm.{side}"):
                rig.pose.bones[bone_name].keyframe_insert("rotation_euler", frame=frame)
        u = (frame - start) / max(1, end - start)
        rig.location = (x0 + travel[0] * u, y0 + travel[1] * u, rig.location.z)
        rig.keyframe_insert("location", frame=frame)


def _camera(scene: Any, name: str) -> Any:
    cam = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    cam.data.lens = 35
    cam.rotation_mode = "QUATERNION"
    scene.collection.objects.link(cam)
    return cam


def _look(cam: Any, location: Vector, target: Vector, frame: int) -> None:
    cam.location = location
    cam.rotation_quaternion = (target - location).to_track_quat("-Z", "Y")
    cam.keyframe_insert("location", frame=frame)
    cam.keyframe_insert("rotation_quaternion", frame=frame)


def build_demo_scene(scene: Any) -> None:
    """Fill an empty scene with the demo set, character, cameras and markers."""
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080
    scene.render.resolution_percentage = 100
    scene.render.fps, scene.render.fps_base = 24, 1.0
    scene.frame_start, scene.frame_end = 1, 72
    _build_set(scene)
    hero = build_character(scene, "Hero", (-2.0, 0.0, 0.0))
    _animate_walk(hero, 1, 72, (4.0, 0.0))
    stranger = build_character(scene, "Stranger", (3.0, 1.2, 0.0))
    stranger.rotation_euler.z = -math.pi / 2  # faces its way: -X (the rig faces its -Y)
    _animate_walk(stranger, 1, 72, (-6.0, 0.0))

    chest = Vector((0.0, 0.0, 1.3))
    dolly = _camera(scene, "Cam.Dolly")
    for frame, dist in ((1, 9.0), (12, 7.0), (24, 5.0)):
        _look(dolly, Vector((-1.5, -dist, 1.6)), chest + Vector((-1.5, 0, 0)), frame)
    pan = _camera(scene, "Cam.Pan")
    for frame in range(25, 49, 4):
        x = -2.0 + 4.0 * (frame - 1) / 71.0  # follow the walker's x
        _look(pan, Vector((0.0, -7.0, 1.5)), Vector((x, 0.0, 1.2)), frame)
    orbit = _camera(scene, "Cam.Orbit")
    for frame in range(49, 73, 4):
        # A 60° arc: a wider one ends inside Building.04 (the flow jumps and the maps go blank there).
        angle = math.radians(-90 + (frame - 49) * 2.5)
        x = -2.0 + 4.0 * (frame - 1) / 71.0
        center = Vector((x, 0.0, 1.2))
        _look(orbit, center + Vector((math.cos(angle) * 6.0, math.sin(angle) * 6.0, 1.0)), center, frame)

    for name, frame, cam in (("Dolly", 1, dolly), ("Pan", 25, pan), ("Orbit", 49, orbit)):
        scene.timeline_markers.new(name, frame=frame).camera = cam
    scene.camera = dolly
    scene.frame_set(1)


def dress(rig: Any, colour: tuple[float, float, float, float]) -> None:
    """Give the character's body one colour (a material, so Workbench and Cycles both show it)."""
    material = bpy.data.materials.new(f"{rig.name} coat")
    material.diffuse_color = colour
    material.use_nodes = True
    bsdf = material.node_tree.nodes.get("Principled BSDF")
    if bsdf is not None:
        bsdf.inputs["Base Color"].default_value = colour
    for child in rig.children:
        if child.type == "MESH":
            child.data.materials.append(material)


def render_reference(rig: Any, path: Any, size: int = 256) -> Any:
    """A front view of the character alone, rendered here (Workbench; Cycles where there is no GPU context).

    The demo's reference image for the traveller: made locally, nothing downloaded. Returns `path`.
    """
    scene = bpy.data.scenes.new("Reference")
    try:
        scene.render.resolution_x = scene.render.resolution_y = size
        scene.render.resolution_percentage = 100
        scene.render.image_settings.file_format = "PNG"
        scene.render.image_settings.color_mode = "RGB"
        scene.render.filepath = str(path)
        scene.view_settings.view_transform = "Standard"
        for obj in [rig, *rig.children]:
            scene.collection.objects.link(obj)
        world = bpy.data.worlds.new("Reference")
        world.color = (0.8, 0.8, 0.8)
        scene.world = world
        scene.frame_set(1)
        cam = bpy.data.objects.new("Reference Camera", bpy.data.cameras.new("Reference Camera"))
        cam.data.type = "ORTHO"
        cam.data.ortho_scale = 2.2
        base = rig.matrix_world.translation
        cam.location = base + rig.matrix_world.to_3x3() @ Vector((0.0, -6.0, 0.0)) + Vector((0.0, 0.0, 1.0))
        cam.rotation_euler = (rig.matrix_world.to_3x3() @ Vector((0.0, 1.0, 0.0))).to_track_quat("-Z", "Y").to_euler()
        scene.collection.objects.link(cam)
        scene.camera = cam
        scene.render.engine = "BLENDER_WORKBENCH"
        scene.display.shading.light = "STUDIO"
        scene.display.shading.color_type = "MATERIAL"
        scene.display.shading.background_type = "WORLD"
        try:
            bpy.ops.render.render(write_still=True, scene=scene.name)
        except RuntimeError:  # no OpenGL context on this machine: the path tracer needs none
            scene.render.engine = "CYCLES"
            scene.cycles.samples = 16
            scene.cycles.device = "CPU"
            bpy.ops.render.render(write_still=True, scene=scene.name)
        bpy.data.objects.remove(cam)
    finally:
        bpy.data.scenes.remove(scene)
    return path
