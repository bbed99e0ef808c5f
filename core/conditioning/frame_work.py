"""A rendered frame's maps, made on a worker thread while Cycles renders the next frame.

Blender releases the GIL while Cycles renders, and the render keeps the cores busy only while it
traces: its sync, the EXR write and everything after are one thread. So the main thread renders
frame N+1 while `FrameWorker` reads frame N's passes and writes its flow, masks, pose, normal,
line-art and seg maps and its Z scratch. At most one frame is in flight: `collect()` waits for it
(and re-raises its error, so a failing frame stops the shot one step later, never silently), and
memory stays one frame's passes whatever the shot's length.

Everything a worker job holds is plain data (numpy arrays, paths, projected keypoints): it never
touches bpy. Any thread (`finish_frame` runs on the worker; `FrameWorker` is driven from the main
thread).
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import depth, flow, openpose_draw, pose
from .geometry_maps import GeometryMaps
from .png import write_png
from .render import read_passes


@dataclass
class FrameJob:
    """One rendered frame, as the main thread hands it over."""

    frame: int
    exr: Path  # the frame's passes, deleted once read
    layer: str  # the view layer's name (channel prefix)
    folder: Path  # the shot's temporary conditioning folder
    size: tuple[int, int]
    people: list[pose.ProjectedPerson] | None  # None: the scene has no person
    camera: tuple[np.ndarray, np.ndarray] | None  # (world matrix, projection) for the normal / line-art maps


@dataclass
class FrameResult:
    frame: int
    z_range: tuple[float, float] | None
    pose: bool  # someone is visible: the frame has a pose map
    ids: list[int]  # mask ids the frame shows


def finish_frame(job: FrameJob, geo: GeometryMaps) -> FrameResult:
    """Read the frame's passes and write every map of it (depth waits for the shot's near/far: Z is kept)."""
    folder, name = job.folder, f"{job.frame:04d}"
    width, height = job.size
    passes = read_passes(job.exr, job.layer)
    # The masks' ids: the pass itself, or mapped back from per-object numbers (geometry_maps.py).
    z, vec, index = passes["z"], passes["vector"], geo.groups(passes["index"])
    forward, backward = flow.flows_from_vector_pass(vec[..., 0], vec[..., 1], vec[..., 2], vec[..., 3])
    np.save(folder / "flow" / "forward" / f"{name}.npy", forward)
    np.save(folder / "flow" / f"{name}.npy", backward)
    ids = np.clip(index, 0, 65535).astype(np.uint16)
    write_png(folder / "masks" / f"{name}.png", ids)
    if job.camera is not None:
        geo.frame(folder, job.frame, passes, job.camera, job.size)
    found: list[dict[str, Any]] = []
    if job.people:
        found, drawn = pose.people_in_frame(job.people, width, height, z, index)
        if found:
            doc = {"version": 1.3, "canvas_width": width, "canvas_height": height, "people": found}
            (folder / "pose" / f"{name}.json").write_text(json.dumps(doc))
            write_png(folder / "pose" / f"{name}.png", openpose_draw.draw_people(height, width, drawn))
    # Z waits on disk, not in memory: a two-minute shot must not need gigabytes before its depth
    # maps can be normalized.
    np.save(folder / ".exr" / f"z{name}.npy", z)
    # Which ids each frame shows: characters not in a shot are then known without reading its masks
    # (a count per id, not np.unique: no sort of every pixel).
    shown = [int(v) for v in np.flatnonzero(np.bincount(ids.ravel())) if v]
    return FrameResult(job.frame, depth.z_range(z), bool(found), shown)


class FrameWorker:
    """One worker thread, at most one frame in flight (see the module docstring)."""

    def __init__(self, geo: GeometryMaps) -> None:
        self._geo = geo
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[FrameResult] | None = None

    def submit(self, job: FrameJob) -> FrameResult | None:
        """Hand over a frame; returns the previous frame's result (None for the first)."""
        done = self.collect()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="viewfinder-maps")
        self._pending = self._pool.submit(finish_frame, job, self._geo)
        return done

    def collect(self) -> FrameResult | None:
        """Wait for the frame in flight, if any; its result (its error is raised here)."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def close(self) -> None:
        """Wait for the frame in flight (its error dropped: the shot is already stopping) and end the thread."""
        try:
            self.collect()
        except Exception:  # noqa: BLE001 - abort path: the folder is deleted anyway
            pass
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
