"""Normal and line-art maps rendered by Cycles, against analytic geometry (issue 23).

A sphere in front of a perspective and an orthographic camera: every pixel's normal in the map
against the sphere's analytic normal in the camera frame. A cube from a known camera: every line
pixel within one pixel of a projected visible edge, every visible edge drawn, no line on a face.
Bad input: no geometry in view, an orthographic camera (a message, the maps exact), a modifier or geometry
nodes changing the topology per frame.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import bpy
import numpy as np
import pytest
from mathutils import Vector


def new_scene(size: tuple[int, int] = (96, 64)) -> bpy.types.Scene:
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = size
    scene.frame_start = scene.frame_end = 1
    return scene


def look_at(scene: bpy.types.Scene, location: tuple[float, float, float], target: tuple[float, float, float],
            ortho_scale: float | None = None, roll: float = 0.0) -> bpy.types.Object:
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam)
    cam.location = location
    quat = (Vector(target) - Vector(location)).to_track_quat("-Z", "Y")
    cam.rotation_euler = quat.to_euler()
    cam.rotation_euler.rotate_axis("Z", roll)
    if ortho_scale is not None:
        cam.data.type = "ORTHO"
        cam.data.ortho_scale = ortho_scale
    scene.camera = cam
    return cam


def render(vfmod: Any, scene: bpy.types.Scene, out: Path, **options: Any) -> Any:
    maps = vfmod("core.conditioning.geometry_maps").MapOptions(**options)
    shot = types.SimpleNamespace(name="Shot", camera=scene.camera, frame_start=scene.frame_start,
                                 frame_end=scene.frame_end)
    w, h = scene.render.resolution_x, scene.render.resolution_y
    return vfmod("core.conditioning").render_shot(scene, shot, out / "conditioning", width=w, height=h, maps=maps)


def camera_rays(vfmod: Any, scene: bpy.types.Scene) -> Any:
    w, h = scene.render.resolution_x, scene.render.resolution_y
    projection = scene.camera.calc_matrix_camera(bpy.context.evaluated_depsgraph_get(), x=w, y=h)
    return vfmod("core.conditioning.lineart").CameraRays.from_projection(np.array(projection), w, h)


def analytic_sphere(rays: Any, centre_cam: np.ndarray, radius: float, size: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(hit mask, camera-space normals) of a sphere for every pixel centre's ray."""
    w, h = size
    u = (np.arange(w) + 0.5) * rays.ax + rays.bx
    v = (np.arange(h) + 0.5) * rays.ay + rays.by
    if rays.ortho:  # rays along -Z from (u, v, 0)
        origin = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.zeros((h, w))), -1)
        direction = np.broadcast_to(np.array([0.0, 0.0, -1.0]), (h, w, 3))
    else:  # rays from the eye through (u, v, -1)
        origin = np.zeros((h, w, 3))
        direction = np.stack(np.broadcast_arrays(u[None, :], v[:, None], -np.ones((h, w))), -1)
        direction = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    oc = origin - centre_cam
    b = np.einsum("...k,...k", oc, direction)
    c = np.einsum("...k,...k", oc, oc) - radius * radius
    disc = b * b - c
    hit = disc > 0
    t = -b - np.sqrt(np.where(hit, disc, 0.0))
    points = origin + t[..., None] * direction
    return hit, (points - centre_cam) / radius


@pytest.mark.parametrize("ortho", [False, True], ids=["perspective", "orthographic"])
def test_sphere_normals_match_the_analytic_normal_at_every_pixel(vf: Any, vfmod: Any, tmp_path: Path,
                                                                  ortho: bool) -> None:
    scene = new_scene()
    bpy.ops.mesh.primitive_ico_sphere_add(subdivisions=6, radius=1.0, location=(0.5, 0.3, 0.4))
    bpy.ops.object.shade_smooth()
    cam = look_at(scene, (2.0, -5.0, 1.5), (0.0, 0.0, 0.0), ortho_scale=4.0 if ortho else None, roll=0.3)
    result = render(vfmod, scene, tmp_path, normal=True)
    png, normal = vfmod("core.conditioning.png"), vfmod("core.conditioning.normal")
    image = png.read_png(result.out_dir / "normal" / "0001.png")
    world_to_cam = np.array(cam.matrix_world.inverted())
    centre = (world_to_cam @ np.array([0.5, 0.3, 0.4, 1.0]))[:3]
    hit, expected = analytic_sphere(camera_rays(vfmod, scene), centre, 1.0, (96, 64))
    drawn = np.any(image != normal.BACKGROUND, axis=-1)
    # Geometry where the analytic sphere is, up to the tessellated rim.
    assert (drawn != hit).sum() <= 0.03 * hit.sum()
    both = drawn & hit
    error = np.degrees(np.arccos(np.clip(np.einsum("...k,...k", normal.decode(image), expected), -1.0, 1.0)))
    facing = expected[..., 2] > 0.25  # away from the grazing rim, where a facet may stand in for the sphere
    assert both.sum() > 1000 and facing[both].mean() > 0.8
    assert error[both & facing].max() < 2.0, f"worst pixel {error[both & facing].max():.2f} degrees"
    assert error[both & facing].mean() < 0.6
    assert np.percentile(error[both], 99) < 6.0
    # The convention in one pixel each: the sphere's left edge is red, its top green, its centre blue.
    rows, cols = np.nonzero(both)
    left = (rows[cols.argmin()], cols.min())
    top = (rows.min(), cols[rows.argmin()])
    assert image[left][0] > 200 and image[top][1] > 200
    assert result.meta["maps"]["normal"]["background"] == [128, 128, 255]
    # Bad input: an orthographic camera gets a message naming the shot and the camera (the maps stay exact).
    said = [w for w in result.warnings if "orthographic" in w]
    assert len(said) == ortho and all("'Shot'" in w and "'Cam'" in w and "normal" in w for w in said), said


def visible_edges(cam: bpy.types.Object, cube: bpy.types.Object, scene: bpy.types.Scene) -> list[np.ndarray]:
    """The projected (pixel) end points of the cube's edges that touch a face turned to the camera."""
    from bpy_extras.object_utils import world_to_camera_view

    w, h = scene.render.resolution_x, scene.render.resolution_y
    mesh = cube.data
    forward = cam.matrix_world.to_3x3() @ Vector((0.0, 0.0, -1.0))
    front = set()
    for poly in mesh.polygons:
        centre = cube.matrix_world @ poly.center
        normal = cube.matrix_world.to_3x3() @ poly.normal
        towards = -forward if cam.data.type == "ORTHO" else cam.matrix_world.translation - centre
        if normal.dot(towards) > 0:
            front.update(poly.edge_keys)
    edges = []
    for key in front:
        ends = []
        for index in key:
            ndc = world_to_camera_view(scene, cam, cube.matrix_world @ mesh.vertices[index].co)
            ends.append((ndc.x * w, (1.0 - ndc.y) * h))
        edges.append(np.array(ends))
    return edges


def distance_to_segments(points: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    best = np.full(len(points), np.inf)
    for a, b in edges:
        ab = b - a
        t = np.clip(((points - a) @ ab) / (ab @ ab), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(points - (a + t[:, None] * ab), axis=1))
    return best


@pytest.mark.parametrize("ortho", [False, True], ids=["perspective", "orthographic"])
@pytest.mark.parametrize("form", ["canny", "lineart"])
def test_cube_lines_fall_on_its_projected_edges(vf: Any, vfmod: Any, tmp_path: Path, ortho: bool, form: str) -> None:
    scene = new_scene((160, 120))
    bpy.ops.mesh.primitive_cube_add(size=2.0, location=(0.0, 0.0, 0.0))
    cube = bpy.context.object
    cam = look_at(scene, (4.0, -5.0, 3.0), (0.0, 0.0, 0.0), ortho_scale=5.0 if ortho else None)
    result = render(vfmod, scene, tmp_path, lineart=True, lineart_form=form, line_weight=1)
    lines = vfmod("core.conditioning.png").read_png(result.out_dir / "lineart" / "0001.png") > 0
    edges = visible_edges(cam, cube, scene)
    assert len(edges) == 9  # three faces turned to the camera: 3 creases, 6 outline edges
    rows, cols = np.nonzero(lines)
    centres = np.stack([cols + 0.5, rows + 0.5], axis=1)
    # Every line pixel within one pixel of a projected edge: no line on a face.
    assert distance_to_segments(centres, edges).max() <= 1.0
    # Every edge drawn: each point along it has a line pixel within one and a half pixels.
    for a, b in edges:
        samples = a + np.linspace(0.02, 0.98, 60)[:, None] * (b - a)
        nearest = np.min(np.linalg.norm(samples[:, None, :] - centres[None, :, :], axis=2), axis=1)
        assert nearest.max() <= 1.5, f"edge {a} -> {b} has a gap of {nearest.max():.2f} px"
    assert result.meta["maps"]["lineart"]["form"] == form


def test_mlsd_form_draws_the_cube_as_straight_segments(vf: Any, vfmod: Any, tmp_path: Path) -> None:
    scene = new_scene((160, 120))
    bpy.ops.mesh.primitive_cube_add(size=2.0)
    cam = look_at(scene, (4.0, -5.0, 3.0), (0.0, 0.0, 0.0))
    result = render(vfmod, scene, tmp_path, lineart=True, lineart_form="mlsd")
    lines = vfmod("core.conditioning.png").read_png(result.out_dir / "lineart" / "0001.png") > 0
    rows, cols = np.nonzero(lines)
    centres = np.stack([cols + 0.5, rows + 0.5], axis=1)
    edges = visible_edges(cam, bpy.context.object, scene)
    assert distance_to_segments(centres, edges).max() <= 1.5
    covered = [np.min(np.linalg.norm((a + b) / 2 - centres, axis=1)) <= 1.5 for a, b in edges]
    assert all(covered)


def test_no_geometry_in_view_still_writes_every_map_and_says_so(vf: Any, vfmod: Any, tmp_path: Path) -> None:
    scene = new_scene()
    bpy.ops.mesh.primitive_cube_add(location=(0.0, 10.0, 0.0))
    look_at(scene, (0.0, 0.0, 0.0), (0.0, -10.0, 0.0))  # looking away from the cube
    result = render(vfmod, scene, tmp_path, normal=True, lineart=True, seg=True)
    png = vfmod("core.conditioning.png")
    assert (png.read_png(result.out_dir / "normal" / "0001.png") == [128, 128, 255]).all()
    assert not png.read_png(result.out_dir / "lineart" / "0001.png").any()
    assert (png.read_png(result.out_dir / "seg" / "0001.png") == 255).all()
    assert any("'Shot'" in w and "sees no geometry" in w and "normal" in w for w in result.warnings)


def test_a_modifier_changing_topology_is_named_and_the_maps_stay_right(vf: Any, vfmod: Any, tmp_path: Path) -> None:
    scene = new_scene()
    scene.frame_start, scene.frame_end = 1, 4
    bpy.ops.mesh.primitive_uv_sphere_add(segments=16, ring_count=8, location=(0.0, 0.0, 0.0))
    growing = bpy.context.object
    growing.name = "Growing"
    build = growing.modifiers.new("Build", "BUILD")
    build.frame_start, build.frame_duration = 1, 3
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(2.5, 0.0, 0.0))
    look_at(scene, (0.0, -8.0, 0.0), (0.8, 0.0, 0.0))
    result = render(vfmod, scene, tmp_path, normal=True, lineart=True, seg=True)
    assert any("'Growing'" in w and "topology" in w and "'Build'" in w for w in result.warnings)
    png = vfmod("core.conditioning.png")
    for frame in range(1, 5):
        assert png.read_png(result.out_dir / "lineart" / f"{frame:04d}.png").any()
        assert (png.read_png(result.out_dir / "seg" / f"{frame:04d}.png") != 255).any()
    assert result.meta["maps"]["lineart"]["frames"] == [1, 2, 3, 4]


def test_geometry_nodes_changing_topology_are_named_too(vf: Any, vfmod: Any, tmp_path: Path) -> None:
    """A geometry-nodes modifier whose grid gains a column of vertices every frame: named like a Build modifier."""
    scene = new_scene()
    scene.frame_start, scene.frame_end = 2, 4  # Vertices X = the frame: a grid of faces from frame 2
    bpy.ops.mesh.primitive_plane_add(size=2.0)  # its mesh replaced by the tree's grid, in the XY plane
    grid = bpy.context.object
    grid.name = "Grid"
    tree = bpy.data.node_groups.new("Growing grid", "GeometryNodeTree")
    tree.interface.new_socket(name="Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    output = tree.nodes.new("NodeGroupOutput")
    mesh = tree.nodes.new("GeometryNodeMeshGrid")
    time = tree.nodes.new("GeometryNodeInputSceneTime")
    tree.links.new(time.outputs["Frame"], mesh.inputs["Vertices X"])
    tree.links.new(mesh.outputs["Mesh"], output.inputs["Geometry"])
    grid.modifiers.new("Grow", "NODES").node_group = tree
    look_at(scene, (0.0, 0.0, 6.0), (0.0, 0.0, 0.0))
    result = render(vfmod, scene, tmp_path, normal=True, lineart=True, seg=True)
    assert any("'Grid'" in w and "topology" in w and "'Grow'" in w for w in result.warnings), result.warnings
    png = vfmod("core.conditioning.png")
    for frame in (2, 3, 4):  # the grid is in view on every frame: every map still drawn
        assert (png.read_png(result.out_dir / "seg" / f"{frame:04d}.png") != 255).any()
        assert png.read_png(result.out_dir / "lineart" / f"{frame:04d}.png").any()
