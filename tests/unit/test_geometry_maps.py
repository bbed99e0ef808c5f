"""Plain-module checks of the normal, line-art and MLSD maps (numpy only; Blender's own tests render them)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import load

normal = load("core.conditioning.normal")
lineart = load("core.conditioning.lineart")
mlsd = load("core.conditioning.mlsd")
geometry_maps = load("core.conditioning.geometry_maps")


def perspective(lens_ratio: float = 1.5, aspect: float = 16 / 9, shift_x: float = 0.0) -> np.ndarray:
    """An OpenGL projection as Blender builds it (x: lens / half sensor width; w = -Z)."""
    p = np.zeros((4, 4))
    p[0, 0], p[1, 1] = lens_ratio, lens_ratio * aspect
    p[0, 2] = 2.0 * shift_x
    p[2, 2], p[2, 3], p[3, 2] = -1.0, -0.2, -1.0
    return p


def orthographic(scale: float = 4.0, aspect: float = 16 / 9) -> np.ndarray:
    p = np.eye(4)
    p[0, 0], p[1, 1] = 2.0 / scale, 2.0 / scale * aspect
    p[2, 2], p[2, 3] = -0.02, -1.0
    return p


def test_normalbae_axes_and_rounding() -> None:
    # Blender camera axes: a normal pointing left (-x) is red, up (+y) green, at the camera (+z) blue.
    cam = np.array([[[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]], dtype=np.float32)
    cam = np.moveaxis(cam, -1, 0)  # channels first, as the passes come
    encoded = normal.encode(cam, np.ones((1, 4), bool))
    assert encoded[0].tolist() == [[255, 128, 128], [128, 255, 128], [128, 128, 255], [0, 128, 128]]
    assert normal.encode(cam, np.zeros((1, 4), bool))[0, 0].tolist() == list(normal.BACKGROUND)
    unit = np.array([0.48, -0.6, 0.64])
    back = normal.decode(normal.encode(unit.reshape(3, 1, 1).astype(np.float32), np.ones((1, 1), bool)))
    assert math.degrees(math.acos(float(back[0, 0] @ unit))) < 0.5


def test_camera_rotation_ignores_the_camera_objects_scale() -> None:
    # A camera looking down -Y (rotated 90 degrees about X), scaled by 3: world +Z is camera +Y (up).
    world = np.eye(4)
    world[:3, :3] = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]) * 3.0
    rotation = normal.world_to_camera_rotation(world)
    world_normals = np.array([[[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [0.0, 0.0, 0.0]]], dtype=np.float32)
    cam = np.moveaxis(normal.camera_normals(np.moveaxis(world_normals, -1, 0), rotation), 0, -1)
    assert np.allclose(cam[0, 0], [0, 1, 0], atol=1e-6) and np.allclose(cam[0, 1], [0, 0, 1], atol=1e-6)
    assert np.all(cam[0, 2] == 0.0)


@pytest.mark.parametrize("projection", [perspective(), perspective(shift_x=0.1), orthographic()])
def test_camera_rays_invert_the_projection(projection: np.ndarray) -> None:
    w, h = 64, 36
    rays = lineart.CameraRays.from_projection(projection, w, h)
    z = np.full((h, w), 5.0)
    points = np.stack(rays.positions(z), axis=-1).astype(np.float64)
    homogeneous = np.concatenate([points, np.ones((h, w, 1))], axis=-1) @ projection.T
    ndc = homogeneous[..., :2] / homogeneous[..., 3:4]
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    assert np.allclose(ndc[..., 0], 2 * u / w - 1, atol=1e-5) and np.allclose(ndc[..., 1], 1 - 2 * v / h, atol=1e-5)
    assert rays.ortho == (projection[3, 3] == 1.0)


def scene_maps(h: int = 40, w: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index, Z and normals of a frontal wall (object 1) at z=10 over the whole frame."""
    index = np.ones((h, w), np.int32)
    z = np.full((h, w), 10.0)
    normals = np.zeros((3, h, w), np.float32)
    normals[2] = 1.0
    return index, z, normals


def test_outlines_are_one_pixel_on_the_nearer_object() -> None:
    index, z, normals = scene_maps()
    index[10:20, 15:30] = 2
    z[10:20, 15:30] = 4.0
    lines = lineart.edge_pixels(index, z, normals, lineart.CameraRays.from_projection(perspective(), 60, 40))
    box = np.zeros_like(lines)
    box[10:20, 15:30] = True
    inner = np.zeros_like(lines)
    inner[11:19, 16:29] = True
    assert np.array_equal(lines, box & ~inner)  # the box's own border pixels, nothing else


def test_depth_steps_and_creases_within_one_object() -> None:
    rays = lineart.CameraRays.from_projection(perspective(), 60, 40)
    index, z, normals = scene_maps()
    z[:, 30:] = 20.0  # the same object, farther on the right: a step
    step = lineart.edge_pixels(index, z, normals, rays)
    assert step.sum() == 40 and step[:, 29].all()
    # A fold: the right half turns 90 degrees away (a wall seen at its edge), continuous in depth.
    index, z, normals = scene_maps()
    normals[:, :, 30:] = np.array([1.0, 0.0, 0.0])[:, None, None]
    fold = lineart.edge_pixels(index, z, normals, rays, crease_deg=30.0)
    assert fold.sum() == 40 and fold[:, 29].all()
    assert not lineart.edge_pixels(index, z, normals, rays, crease_deg=95.0).any()


def test_no_lines_on_a_floor_seen_at_a_grazing_angle() -> None:
    """A level floor under a camera looking almost along it: depth grows fast but it is one surface."""
    w, h = 80, 45
    projection = perspective()
    rays = lineart.CameraRays.from_projection(projection, w, h)
    tilt = math.radians(4.0)  # the camera looks 4 degrees down, 1.6 units above the floor
    up = np.array([0.0, math.cos(tilt), math.sin(tilt)])  # the floor's normal in camera space
    v = (np.arange(h) + 0.5) * rays.ay + rays.by
    u = (np.arange(w) + 0.5) * rays.ax + rays.bx
    direction = np.stack(np.broadcast_arrays(u[None, :], v[:, None], -np.ones((h, w))), axis=-1)
    along = direction @ up
    hit = along < -1e-3
    z = np.where(hit, 1.6 / np.maximum(-along, 1e-9), 0.0)
    index = hit.astype(np.int32)
    normals = np.moveaxis(np.where(hit[..., None], up, 0.0), -1, 0).astype(np.float32)
    lines = lineart.edge_pixels(index, z, normals, rays)
    first_row = int(np.argmax(hit.any(axis=1)))
    assert lines[first_row].any() and not lines[first_row + 1:].any()  # the horizon, not the floor


def test_smooth_sphere_has_its_outline_only() -> None:
    w = h = 64
    rays = lineart.CameraRays.from_projection(orthographic(4.0, 1.0), w, h)
    x, y, _ = rays.positions(np.zeros((h, w)))
    hit = x * x + y * y < 1.0
    nz = np.sqrt(np.clip(1.0 - x * x - y * y, 0.0, 1.0))
    normals = np.where(hit[None], np.stack([x, y, nz]), 0.0).astype(np.float32)
    z = np.where(hit, 10.0 - nz, 0.0)
    lines = lineart.edge_pixels(hit.astype(np.int32), z, normals, rays)
    outline = hit & ~(np.roll(hit, 1, 0) & np.roll(hit, -1, 0) & np.roll(hit, 1, 1) & np.roll(hit, -1, 1))
    assert np.array_equal(lines, outline)


@pytest.mark.parametrize("weight, expected", [(1, 1), (2, 4), (3, 9), (4, 12)])
def test_brush_sizes(weight: int, expected: int) -> None:
    assert len(lineart.brush(weight)) == expected
    lines = np.zeros((9, 9), bool)
    lines[4, 4] = True
    assert lineart.thicken(lines, weight).sum() == expected


def test_forms() -> None:
    lines = np.zeros((30, 40), bool)
    lines[10, 5:35] = True
    for form in lineart.FORMS:
        image = lineart.render_form(lines, form, 3)
        assert image.dtype == np.uint8 and set(np.unique(image)) == {0, 255}
    assert (lineart.render_form(lines, "canny", 3) > 0).sum() == 30
    assert (lineart.render_form(lines, "lineart", 3) > 0).sum() > 60
    with pytest.raises(ValueError, match="form"):
        lineart.render_form(lines, "sketch", 1)


def test_mlsd_keeps_straight_sides_and_drops_a_small_circle() -> None:
    lines = np.zeros((80, 120), bool)
    lines[10, 10:60] = lines[50, 10:60] = True  # a rectangle's outline
    lines[10:51, 10] = lines[10:51, 59] = True
    yy, xx = np.indices(lines.shape)
    ring = np.abs(np.hypot(xx - 95, yy - 40) - 6.0) < 0.5  # a small circle
    lines |= ring
    segments = mlsd.straight_segments(lines)
    drawn = mlsd.draw_segments(lines.shape, segments)
    rectangle = lines & ~ring
    assert (drawn & rectangle).sum() >= 0.9 * rectangle.sum()
    assert not (drawn & (np.hypot(xx - 95, yy - 40) < 9)).any()
    # Every drawn pixel lies on (or right next to) a line of the geometry.
    near = lineart.thicken(lines, 3)
    assert not (drawn & ~near).any()


def test_options_from_a_shot_without_the_new_settings_render_none() -> None:
    class Shot:
        depth_weight = 1.0

    assert geometry_maps.options_from_shot(Shot()).kinds == ()

    class Lined:
        normal_weight, lineart_weight, seg_weight = 0.0, 0.5, 0.0
        lineart_form, line_weight, crease_angle = "MLSD", 2, math.radians(45.0)

    options = geometry_maps.options_from_shot(Lined())
    assert options.kinds == ("lineart",) and options.lineart_form == "mlsd" and options.line_weight == 2
    assert options.crease_angle_deg == pytest.approx(45.0) and options.normal_pass and options.per_object
