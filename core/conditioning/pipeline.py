"""render_shot: a shot's control maps, rendered from its camera, written atomically.

Runs on Blender's main thread (renders with bpy). See __init__.py for the contract.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import depth, flow, masks, pose, render
from .errors import ConditioningCancelled, ConditioningError, ConditioningResult
from .frame_work import FrameJob, FrameResult, FrameWorker
from .geometry_maps import GeometryMaps, MapOptions
from .on_disk import (
    FORMAT_VERSION,
    clean_stale,
    drawn_objects,
    inputs_key,
    read_meta,
    remember_state,
    remembered_state,
    shot_result,
    state_hash_begin,
    state_hash_frame,
    swap_into_place,
)
from .png import write_png

log = logging.getLogger(__name__)


def _check_inputs(scene: Any, shot: Any, width: int, height: int) -> Any:
    camera = shot.camera
    if camera is None or camera.name not in scene.objects:
        raise ConditioningError(
            f"Shot '{shot.name}' has no camera (it was deleted or is not in this scene): "
            "bind a camera to its marker (Marker ▸ Bind Camera to Markers)"
        )
    if camera.type != "CAMERA":
        raise ConditioningError(
            f"Shot '{shot.name}' is bound to '{camera.name}', which is not a camera: "
            "select a camera and use Marker ▸ Bind Camera to Markers"
        )
    if shot.frame_end < shot.frame_start:
        raise ConditioningError(
            f"Shot '{shot.name}' has no frames ({shot.frame_start}–{shot.frame_end}): move its marker or the next one"
        )
    if width < 8 or height < 8:
        raise ConditioningError(f"Resolution {width}×{height} is too small: raise Long Edge to at least 64")
    return camera


# Seconds of state hashing per step: the hash walks every frame (frame_set), which is
# cheap per frame but not for a two-minute shot at once.
HASH_BUDGET_S = 0.01


class ShotRender:
    """A shot's control maps, one bounded step at a time (main thread, bpy).

    Steps: hash the scene state a few frames at a time (maps that are current are reused);
    render one frame's passes (its maps are made on a worker thread while the next frame renders,
    frame_work.py); encode one frame's depth once the whole shot's near/far is known; finish
    (meta.json, `complete` last, one rename into place). `abort()` removes the
    temporary folder and restores the user's settings. Nothing claims completeness before
    the rename, whatever step an abort or a crash lands on.

    ``hold_settings``: keep the data-pass render settings between steps (`render_shot`,
    blocking: Cycles keeps its scene between frames). Without it every step restores the
    user's settings and frame before it returns, so the UI shows the user's scene between
    ticks of a modal run.
    """

    def __init__(self, scene: Any, shot: Any, out_dir: Path, *, width: int, height: int, force: bool = False,
                 hold_settings: bool = False, maps: MapOptions | None = None) -> None:
        # 1. Check inputs.
        self.camera = _check_inputs(scene, shot, width, height)
        self.shot_name = shot.name
        self.out_dir = Path(out_dir)
        self.width, self.height = width, height
        self.force = force
        self.hold_settings = hold_settings
        self.frames = list(range(shot.frame_start, shot.frame_end + 1))
        self.people, self.warnings = pose.find_people(scene)
        # Normal, line art, segmentation: only what `maps` asks for (geometry_maps.py).
        self.geo = GeometryMaps(maps or MapOptions(), shot.name, has_world=scene.world is not None)
        if self.geo.options.kinds and self.camera.data.type == "ORTHO":  # issue 23's bad input: said, not refused
            kinds = ", ".join(self.geo.options.kinds)
            self.geo.warnings.append(
                f"Shot '{shot.name}': camera '{self.camera.name}' is orthographic: its {kinds} maps are exact for its "
                "parallel view, but the ControlNets were trained on perspective photographs, so the frames may not "
                "keep the flat, orthographic look")
        self._worker = FrameWorker(self.geo)
        self.result: ConditioningResult | None = None
        self.phase = "hash"  # hash → render → depth → finish → done (or aborted)
        self._original = (scene.frame_current, scene.frame_subframe)
        self._fps = scene.render.fps / scene.render.fps_base
        self._tmp = self.out_dir.with_name(f".{self.out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
        self._started = time.perf_counter()
        self._next = 0  # index in `frames` of the phase's next frame
        self._hash: tuple[Any, list[Any]] | None = None
        self._state = ""
        self._key: str | None = None
        self._guard: render.RenderGuard | None = None
        self._layer: Any = None
        self._legend: dict[str, dict[str, Any]] | None = None
        self._ranges: list[tuple[float, float] | None] = []
        self._pose_frames: dict[str, bool] = {}
        self._ids_per_frame: dict[str, list[int]] = {}
        self._span: tuple[float, float] | None = None

    @property
    def done(self) -> bool:
        return self.phase in ("done", "aborted")

    @property
    def frames_rendered(self) -> int:
        """Frames Cycles has rendered (the worker may still be making the last one's maps)."""
        return self._next if self.phase == "render" else len(self._ranges)

    @property
    def depth_done(self) -> int:
        return self._next if self.phase == "depth" else (len(self.frames) if self.phase in ("finish", "done") else 0)

    def step(self, scene: Any) -> None:
        """Do one bounded piece of work: some hashing, one frame's render or depth map, or the finish."""
        if self.done:
            return
        try:
            if self.phase == "hash":
                self._step_hash(scene)
            elif self.phase == "render":
                self._step_render(scene)
            elif self.phase == "depth":
                self._step_depth()
            elif self.phase == "finish":
                self._finish()
        except BaseException:
            self.abort(scene)
            raise
        finally:
            if not self.hold_settings and not self.done:
                self._release(scene)

    def abort(self, scene: Any) -> None:
        """Stop here: the temporary folder goes, the user's settings and frame come back."""
        if self.done:
            return
        self.phase = "aborted"
        self._worker.close()  # its frame in flight writes into the folder about to go
        self._release(scene)
        if self._tmp.exists():
            shutil.rmtree(self._tmp, ignore_errors=True)

    # -- the steps -------------------------------------------------------

    def restore_frame(self, scene: Any) -> None:
        if (scene.frame_current, scene.frame_subframe) != self._original:  # frame_set costs ~0.5 ms
            scene.frame_set(self._original[0], subframe=self._original[1])

    def _release(self, scene: Any) -> None:
        if self._guard is not None:
            guard, self._guard = self._guard, None
            guard.__exit__(None, None, None)
        self.restore_frame(scene)

    def _step_hash(self, scene: Any) -> None:
        # 2. Reuse the maps on disk when nothing they depend on has changed: the state hash is
        #    remembered by its inputs (on_disk.inputs_key), else computed a few frames per step.
        if self._hash is None:
            ids, _legend = masks.assign_ids(scene)
            self.geo.prepare(ids, masks.owner_of)
            extra = self.geo.state()  # only with normal / line art / seg on: depth + pose shots keep their hash
            objects = drawn_objects(scene, self.camera)
            key = inputs_key(scene, self.camera, self.frames, self.width, self.height, objects)
            self._key = hashlib.sha256(key.encode() + extra).hexdigest() if key is not None and extra else key
            self._state = remembered_state(self._key) or ""
            if not self._state:
                self._hash = state_hash_begin(scene, self.camera, self.frames, self.width, self.height)
                if extra:
                    self._hash[0].update(extra)
                return
        else:
            digest, objects = self._hash
            deadline = time.perf_counter() + HASH_BUDGET_S
            while self._next < len(self.frames) and time.perf_counter() < deadline:
                state_hash_frame(digest, scene, objects, self.frames[self._next])
                self._next += 1
            if self._next < len(self.frames):
                return
            self._state = digest.hexdigest()
            self._next = 0
            remember_state(self._key, self._state)
        existing = read_meta(self.out_dir)
        if not self.force and existing is not None and existing.get("state") == self._state:
            log.info("conditioning for '%s' is current: %s", self.shot_name, self.out_dir)
            # The render's own warnings (no geometry in view, a topology change) come from meta.json: a reused
            # folder says what the render that made it said.
            said = list(dict.fromkeys([*existing.get("warnings", []), *self.warnings, *self.geo.warnings]))
            self.result = shot_result(self.out_dir, existing, said, reused=True)
            self._release(scene)
            self.phase = "done"
            return
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(self.out_dir)
        for sub in ("depth", "pose", "masks", "flow/forward", ".exr", *self.geo.folders()):
            (self._tmp / sub).mkdir(parents=True, exist_ok=True)
        self.phase = "render"

    def _configure(self, scene: Any) -> None:
        # 3. Minimal render settings and mask ids, restored by the guard whatever happens.
        self._guard = render.RenderGuard()
        self._layer = render.configure(self._guard, scene, self.camera, self.width, self.height,
                                       normal=self.geo.options.normal_pass)
        _ids, legend = masks.assign_ids(scene)
        if self._legend is None:
            self._legend = legend
        elif legend != self._legend:
            raise ConditioningError(
                f"Objects were added, removed or renamed while the control maps of '{self.shot_name}' were "
                "rendering: generate again"
            )
        self.geo.assign(self._guard)
        names = {entry["name"]: int(key) for key, entry in legend.items()}
        for person in self.people:
            person.mask_id = names.get(person.armature.name, -1)

    def _step_render(self, scene: Any) -> None:
        # 4. One frame: Cycles renders it here; the worker makes its maps (flow, masks, pose, normal,
        # line art, seg) while the next frame renders. Depth waits for the whole shot's near/far.
        if self._guard is None:
            self._configure(scene)
        frame, size = self.frames[self._next], (self.width, self.height)
        exr = render.render_exr(scene, self._layer, frame, self._tmp / ".exr")
        # What needs Blender is read now, on this frame: the keypoints, the camera, the topology.
        people = pose.project_people(scene, self.camera, self.people, *size) if self.people else None
        camera = render.camera_at_frame(self.camera, *size) if self.geo.options.kinds else None
        self.geo.check_topology(scene, render.depsgraph())
        self._record(self._worker.submit(FrameJob(frame, exr, self._layer.name, self._tmp, size, people, camera)))
        self._next += 1
        if self._next == len(self.frames):
            self._record(self._worker.collect())
            self._worker.close()
            self._release(scene)
            self._next = 0
            self._span = depth.merge_ranges(self._ranges)
            if self._span is None:
                more = "".join(f", {k}" for k in self.geo.options.kinds)
                self.warnings.append(f"Shot '{self.shot_name}': the camera sees no geometry, so its depth{more} maps "
                                     "are empty (aim the camera at the set, or move the set in front of it)")
            self.phase = "depth"

    def _record(self, result: FrameResult | None) -> None:
        """Keep what a finished frame tells meta.json (frames finish in order: one worker, one in flight)."""
        if result is None:
            return
        self._ranges.append(result.z_range)
        self._pose_frames[str(result.frame)] = result.pose
        self._ids_per_frame[str(result.frame)] = result.ids

    def _step_depth(self) -> None:
        # 5. One depth map with the whole shot's near/far.
        frame = self.frames[self._next]
        z = np.load(self._tmp / ".exr" / f"z{frame:04d}.npy")
        encoded = depth.encode(z, *self._span) if self._span is not None else np.zeros(z.shape, np.uint16)
        write_png(self._tmp / "depth" / f"{frame:04d}.png", encoded)
        self._next += 1
        if self._next == len(self.frames):
            self.phase = "finish"

    def _finish(self) -> None:
        # 6. meta.json, `complete` last; then the folder moves into place in one rename.
        tmp, camera, people = self._tmp, self.camera, self.people
        shutil.rmtree(tmp / ".exr", ignore_errors=True)
        if not people:
            shutil.rmtree(tmp / "pose")
        near, far = self._span if self._span is not None else (None, None)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "shot": self.shot_name,
            "camera": camera.name,
            "ortho": camera.data.type == "ORTHO",
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "fps": self._fps,
            "near": near,
            "far": far,
            "units": "scene units along the camera's view axis (Blender's Z pass)",
            "formula": depth.FORMULA,
            "depth": {"path": "depth/NNNN.png", "format": "png 16-bit grayscale"},
            "people": [p.armature.name for p in people],
            "pose": bool(people) and any(self._pose_frames.values()),
            "pose_frames": self._pose_frames,
            "pose_format": "pose/NNNN.json OpenPose (COCO-18 body, 21-point hands, pixels) + pose/NNNN.png drawing; "
            "frames with nobody visible have neither",
            "masks": {"path": "masks/NNNN.png", "format": "png 16-bit grayscale, value = id, 0 = background",
                      "legend": self._legend or {}, "ids_per_frame": self._ids_per_frame},
            "flow": flow.CONVENTION,
            **({"maps": self.geo.meta()} if self.geo.options.kinds else {}),
            "state": self._state,
            "render_seconds": round(time.perf_counter() - self._started, 3),
            "warnings": self.warnings + self.geo.warnings,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        meta["complete"] = True
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        swap_into_place(tmp, self.out_dir)
        log.info("conditioning for '%s': %d frames in %.1fs → %s", self.shot_name, len(self.frames),
                 meta["render_seconds"], self.out_dir)
        self.result = shot_result(self.out_dir, meta, self.warnings + self.geo.warnings, reused=False)
        self.phase = "done"


class RenderNeeded(Exception):  # noqa: N818 - a signal, not an error
    """Raised by `render_shot` inside `stepwise()`: the caller steps ``render`` itself, then asks again."""

    def __init__(self, render: ShotRender) -> None:
        super().__init__(f"control maps of '{render.shot_name}' to render")
        self.render = render


@dataclass
class _Stepwise:
    hold_settings: bool
    result: ConditioningResult | None


_STEPWISE: ContextVar[_Stepwise | None] = ContextVar("viewfinder_stepwise", default=None)


@contextmanager
def stepwise(result: ConditioningResult | None = None, *, hold_settings: bool = False) -> Iterator[None]:
    """Within this block `render_shot` renders nothing: it answers ``result`` when that is the
    folder asked for, and otherwise raises `RenderNeeded` with a `ShotRender` (inputs checked).

    So a caller that renders step by step (core/generate/run.py) can run code that calls
    `render_shot` (`shot_job.collect_shot`) twice: once to get its checks and the render to
    step, once with the finished maps.
    """
    token = _STEPWISE.set(_Stepwise(hold_settings, result))
    try:
        yield
    finally:
        _STEPWISE.reset(token)


def render_shot_impl(
    scene: Any, shot: Any, out_dir: Path, *, width: int, height: int,
    progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
    force: bool = False, maps: MapOptions | None = None,
) -> ConditioningResult:
    """The whole shot in one call: a loop over `ShotRender`'s steps, settings held throughout."""
    mode = _STEPWISE.get()
    if mode is not None:
        if mode.result is not None and mode.result.out_dir == Path(out_dir):
            return mode.result
        raise RenderNeeded(ShotRender(scene, shot, out_dir, width=width, height=height, force=force,
                                      hold_settings=mode.hold_settings, maps=maps))
    job = ShotRender(scene, shot, out_dir, width=width, height=height, force=force, hold_settings=True, maps=maps)
    try:
        while not job.done:
            if job.phase == "render":
                if cancel is not None and cancel():
                    raise ConditioningCancelled(f"Rendering the control maps of '{shot.name}' was cancelled")
                job.step(scene)
                if progress is not None:
                    progress(job.frames_rendered, len(job.frames))
            else:
                job.step(scene)
        assert job.result is not None
        return job.result
    finally:
        job.abort(scene)  # a no-op once done; else the temporary folder goes and settings come back
        job.restore_frame(scene)
