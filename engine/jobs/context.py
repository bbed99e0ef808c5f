"""What a runner may use while it runs one job: the public ``RunContext``.

Runners (the batched and FLOW paths in manager.py, Finalize in finalize.py, VIDEO in video.py)
get this context, never the manager: cache lookups, control-map and frame reads, carrying the
previous frame along the flow, the one ``FrameWriter``, and completion. Worker thread only.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..contract.errors import EngineFault
from ..models.codecs import DECODERS

if TYPE_CHECKING:
    from ..coherence.strategies import Carried, FlowCoherence
    from ..contract.schema import FrameSpec, JobRequest
    from ..models.pipelines import PipelineCache
    from ..storage import Storage
    from .job import Job
    from .writer import FrameWriter

logger = logging.getLogger(__name__)


class RunContext:
    """The engine's state a runner reads and writes through, one per job manager."""

    def __init__(self, storage: Storage, pipelines: PipelineCache, writer: FrameWriter,
                 before_denoise: Callable[[Job, list[Any]], None], finish: Callable[[Job, str], None],
                 companions: Callable[[list[Job]], list[Job]] = lambda running: []) -> None:
        self.storage = storage
        self.pipelines = pipelines
        self.writer = writer
        self._before_denoise = before_denoise
        # How a job ends: the manager's, so whoever waits on a job's end (a Ray replica) hears it.
        self._finish = finish
        # Queued FLOW jobs that may join the ones running (engine/jobs/flow.py interleaves them).
        self.companions = companions

    def before_denoise(self, job: Job, frames: list[Any]) -> None:
        """Called with a job's frames just before their pipeline call (the manager's test seam)."""
        self._before_denoise(job, frames)

    def store_frame(self, job: Job, number: int, pixels: np.ndarray) -> None:
        """Hand frame ``number`` (H x W x 3 uint8) to the one FrameWriter: encoded and written on its
        thread, counted done once on disk, read back meanwhile by ``read_frame``."""
        self.writer.put(job, number, job.frame_keys[number], pixels)

    def take_from_cache(self, job: Job, frame: FrameSpec) -> bool:
        """True, and the frame counted as done, when its key is already in the frame cache."""
        fkey = job.frame_keys[frame.frame]
        if self.storage.has_frame(fkey):
            job.done[frame.frame] = fkey
            return True
        return False

    def decode(self, name: str, sha: str, request: JobRequest) -> Any:
        """A control map blob as the pipeline takes it (depth from 16 bits, line art grey in three
        channels, seg indices in ADE20K colours, the others as RGB: codecs.DECODERS), decoded within
        the job's size (engine/images.py)."""
        data, size = self.storage.read_blob(sha), (request.width, request.height)
        return DECODERS[name](data, size)

    def read_frame(self, job: Job, frame: FrameSpec) -> np.ndarray:
        """A finished frame of ``job``: from the writer while it is on its way to disk, else from the cache."""
        from PIL import Image

        pending = self.writer.pending(job.frame_keys[frame.frame])
        if pending is not None:  # handed to the writer, not yet on disk
            return pending
        if not self.storage.has_frame(job.frame_keys[frame.frame]):
            # Damaged since it was made (and now deleted): resubmitting generates it again.
            job.done.pop(frame.frame, None)
            raise EngineFault(f"cached frame {frame.frame} was damaged on the engine's disk and has been deleted; "
                              "generate again to make it again", code="frame_damaged", status=409)
        with Image.open(self.storage.frame_path(job.frame_keys[frame.frame])) as img:
            return np.asarray(img.convert("RGB"))

    def read_depth(self, sha: str, size: tuple[int, int]) -> np.ndarray:
        """The depth map as stored (uint16), for the occlusion check (not the 0..1 tensor);
        decoded within the job's (width, height) (engine/images.py)."""
        from .. import images

        with images.decode(self.storage.read_blob(sha), size=size, max_pixels=size[0] * size[1],
                           field="frames", what="depth map") as img:
            array = np.asarray(img)
        return array if array.dtype == np.uint16 else array.astype(np.uint16)

    def read_flow(self, sha: str) -> np.ndarray | None:
        """A flow blob (.npy, as the add-on writes it); None for other formats (then: a keyframe).

        ``.npz`` is not read: a small archive can unpack to hundreds of MB (issue 11); the
        submit check refuses it first, this is the second line.
        """
        data = self.storage.read_blob(sha)
        try:
            if data[:2] == b"PK":
                raise ValueError("a .npz archive, not a .npy array")
            loaded = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, IndexError) as exc:
            logger.warning("Flow blob %s is not a .npy array (%s); the frame becomes a keyframe", sha[:12], exc)
            return None
        if loaded.ndim != 3 or loaded.shape[2] != 2:
            logger.warning("Flow blob %s has shape %s, not H x W x 2; the frame becomes a keyframe", sha[:12],
                           loaded.shape)
            return None
        return loaded.astype(np.float32)

    def carry(self, job: Job, strategy: FlowCoherence, frame: FrameSpec,
              previous: FrameSpec | None) -> tuple[Carried | None, str | None]:
        """``previous`` (generated) warped along ``frame``'s flow, or (None, why) when ``frame`` is a keyframe."""
        assert previous is not None and frame.flow and frame.depth and previous.depth
        flow = self.read_flow(frame.flow)
        if flow is None:
            return None, "unreadable flow map"
        size = (job.request.width, job.request.height)
        carried = strategy.carry(self.read_frame(job, previous), flow, self.read_depth(previous.depth, size),
                                 self.read_depth(frame.depth, size))
        if strategy.is_cut(carried):
            return None, f"cut ({carried.masks.carried_fraction():.0%} of pixels carried)"
        return carried, None

    def finish(self, job: Job, status: str) -> None:
        """End ``job`` with ``status`` ('done' or 'cancelled'), through the manager."""
        self._finish(job, status)

    def complete(self, job: Job, run_started: float) -> None:
        """The job's frames written, its run time recorded, done (or cancelled part way)."""
        self.writer.wait()
        job.timings["run_s"] = time.perf_counter() - run_started
        self._finish(job, "cancelled" if job.cancel_event.is_set() and len(job.done) < len(job.frame_keys)
                     else "done")
