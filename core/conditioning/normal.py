"""Normal control maps: camera-space unit normals in the ControlNet 1.1 normalbae convention, 8-bit RGB.

The convention (docs/control-maps.md has the research behind it):

    R = -x_cam   (red is the normal pointing to the viewer's LEFT)
    G = +y_cam   (green is the normal pointing UP in the image)
    B = +z_cam   (blue is the normal pointing TOWARDS the camera)
    channel = round((c * 0.5 + 0.5) * 255)

where (x_cam, y_cam, z_cam) is the unit normal in Blender's camera frame (x right, y up,
z backwards, out of the screen towards the viewer; the camera looks down -z).

Why: control_v11p_sd15_normalbae was trained on maps from Bae et al.'s estimator
(ICCV 2021, github.com/baegwangbin/surface_normal_uncertainty) trained on ScanNet normals;
ControlNet 1.1's README says a rendered map must follow that protocol, "blue is front, red
is left, green is top", and its annotator (and controlnet-aux's NormalBaeDetector) writes the
network's output as `(n + 1) / 2 * 255` with no flip. BAE's own figure (readme_scannet.png)
agrees: floors are green, a wall on the left (facing right) is dark cyan (low red), the right
wall is pink (high red), and a vertical face under a camera looking down loses green.
The SDXL and Flux union ControlNets were trained on the same annotator's maps.

The normal is the one Cycles' Normal pass gives (world space, the shading normal of the first
surface hit, facing the camera), rotated by the inverse of the camera's rotation. This is the
same for perspective and orthographic cameras: a camera-space normal depends on the camera's
orientation only, never on the ray (BAE's frame is the camera's, not per-pixel).

Background (no geometry): the normal facing the camera, (0, 0, 1) -> (128, 128, 255), what
the estimator gives a far wall or the sky; meta.json records it.

Plain numpy; runs on any thread.
"""

from __future__ import annotations

import numpy as np

CONVENTION = ("ControlNet 1.1 normalbae (Bae et al. 2021, ScanNet): camera-space unit normal, R = -x (left), "
              "G = +y (up), B = +z (towards the camera), Blender camera axes x right, y up, z backwards")
ENCODING = "png 8-bit RGB, channel = round((n * 0.5 + 0.5) * 255)"
BACKGROUND = (128, 128, 255)  # (0, 0, 1): facing the camera
# Blender camera axes -> normalbae channels: R = -x, G = +y, B = +z.
AXIS_SIGNS = np.array([-1.0, 1.0, 1.0], dtype=np.float32)


def world_to_camera_rotation(camera_matrix_world: np.ndarray) -> np.ndarray:
    """The 3x3 rotation taking world directions into the camera frame (scale removed).

    The columns of the camera's world matrix are its axes in world space; normalized, the
    matrix is a rotation whose transpose is its inverse. A scaled camera object (it happens)
    must not scale the normals.
    """
    basis = np.asarray(camera_matrix_world, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(basis, axis=0)
    norms[norms == 0.0] = 1.0
    return (basis / norms).T


def camera_normals(world_normals: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """(3, H, W) world-space normals (channels first, as the passes come) -> camera-space, float32.

    Cycles' Normal pass holds unit vectors (zero where nothing was hit); a rotation keeps them so,
    so nothing is renormalized: nine multiply-adds per pixel.
    """
    r = rotation.astype(np.float32)
    x, y, z = (world_normals[i].astype(np.float32, copy=False) for i in range(3))
    return np.stack([r[k, 0] * x + r[k, 1] * y + r[k, 2] * z for k in range(3)])


def encode(normals_cam: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) normalbae map of (3, H, W) camera-space normals; background (not `hit`) faces the camera.

    round((c * 0.5 + 0.5) * 255) for c in [-1, 1], as floor(c * 127.5 + 128) (halves round up).
    """
    channels = [np.where(hit, (np.clip(normals_cam[i] * AXIS_SIGNS[i], -1.0, 1.0) * 127.5 + 128.0).astype(np.uint8),
                         np.uint8(BACKGROUND[i])) for i in range(3)]
    return np.stack(channels, axis=-1)


def decode(png: np.ndarray) -> np.ndarray:
    """(H, W, 3) camera-space unit normals (Blender camera axes) back from a normalbae map (tests, previews)."""
    channels = png.astype(np.float64) / 255.0 * 2.0 - 1.0
    cam = channels * AXIS_SIGNS
    return cam / np.maximum(np.linalg.norm(cam, axis=-1, keepdims=True), 1e-9)
