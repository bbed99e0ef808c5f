"""Control maps from the scene: depth, OpenPose, ID masks and optical flow for every frame of a shot.

`render_shot` is what generation calls. It renders headless on the CPU
(Cycles data passes, see render.py), writes into a temporary sibling folder
and renames it to `out_dir` only when complete, so an interrupted render never
leaves a folder that claims completeness. It returns the maps on disk without
rendering when meta.json's `state` hash (camera, object and pose-bone
transforms per frame, mesh data, settings) matches the scene.

Files (NNNN = timeline frame):
    depth/NNNN.png           16-bit inverse depth over the whole shot (depth.py)
    normal/NNNN.png          8-bit RGB camera-space normals, ControlNet 1.1 normalbae convention (normal.py)
    lineart/NNNN.png         8-bit white lines on black from geometry, form canny|lineart|mlsd (lineart.py)
    seg/NNNN.png             8-bit ADE20K class indices, 255 unlabelled (seg.py)
    pose/NNNN.{json,png}     OpenPose JSON + the controlnet-aux drawing, frames with someone visible
    masks/NNNN.png           16-bit ids, legend in meta.json
    flow/NNNN.npy            float32 H×W×2 backward flow (frame N → N−1); flow/forward/NNNN.npy forward (flow.py)
    meta.json                near/far, resolution, camera, frames, conventions, `complete: true` last

`render_shot` returns a `ConditioningResult`: meta.json's contents and the per-frame
manifest of the files the engine gets (`maps`, manifest.py), so callers never re-read the folder.

The last three only when the shot asks for them (`maps`, geometry_maps.MapOptions), from the
same render's passes. Submodules that need bpy are imported by `render_shot` only, so the plain
ones (png, exr, depth, flow, rigs, openpose_draw, manifest, normal, lineart, mlsd, seg) import
without Blender.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConditioningCancelled, ConditioningError, ConditioningResult

__all__ = ["ConditioningCancelled", "ConditioningError", "ConditioningResult", "begin_shot_render", "render_shot"]


def render_shot(
    scene: Any,
    shot: Any,
    out_dir: Path,
    *,
    width: int,
    height: int,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    force: bool = False,
    maps: Any = None,
) -> ConditioningResult:
    """Render a shot's control maps into `out_dir` (its conditioning/ folder). Main thread only.

    `shot` needs `.name .camera .frame_start .frame_end`. `progress(done, total)`
    is called after each frame; `cancel()` is polled before each frame and
    raises ConditioningCancelled. `force` re-renders even when the maps are current. `maps`
    (geometry_maps.MapOptions) adds normal, line-art and segmentation maps; None: depth, pose,
    masks and flow only.
    Raises ConditioningError (message names the shot/object and the fix) for bad input.
    """
    from .pipeline import render_shot_impl

    return render_shot_impl(
        scene, shot, out_dir, width=width, height=height, progress=progress, cancel=cancel, force=force, maps=maps
    )


def begin_shot_render(scene: Any, shot: Any, out_dir: Path, *, width: int, height: int, force: bool = False,
                      hold_settings: bool = False, maps: Any = None) -> Any:
    """A `pipeline.ShotRender`: the same maps as `render_shot`, one bounded `step(scene)` at a time."""
    from .pipeline import ShotRender

    return ShotRender(scene, shot, out_dir, width=width, height=height, force=force, hold_settings=hold_settings,
                      maps=maps)
