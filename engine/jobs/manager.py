"""The job table: jobs validated at submit on the HTTP thread, run one group at a time on a worker thread.

HTTP handlers only read job fields and set events; they never wait on the model.
Finished frames go straight to the frame cache on disk, so memory does not grow
with shot length and a cancelled or failed job keeps every frame it finished.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..contract.errors import EngineFault, NotFound, OutOfMemory, is_out_of_memory, without_paths
from ..contract.schema import FrameSpec, JobRequest
from ..models.pipelines import PipelineCache, SpeedOptions, resolve_device
from ..storage import Storage
from ..upkeep import pin
from .context import RunContext
from .fair_queue import FairQueue
from .flow import interleavable
from .job import Job
from .runners import runner_for, submit_job
from .writer import FrameWriter

logger = logging.getLogger(__name__)

def request_blobs(request: JobRequest) -> set[str]:
    """The blob ids a request names: its frames' maps and sources, and every reference image."""
    shas = {sha for frame in request.frames
            for sha in (frame.depth, frame.pose, frame.normal, frame.lineart, frame.seg, frame.flow, frame.mask,
                        frame.source) if sha}
    shas.update(sha for character in request.characters for sha in character.references)
    shas.update(sha for sha in (request.style_reference, request.palette_reference) if sha)
    shas.update(request.video.references)
    return shas


class Executor(Protocol):
    """Where and how the groups the worker takes off the queue run: on the worker thread here
    (``LocalExecutor``), or cut into units for Ray Serve replicas (engine/ray/jobs.py)."""

    interleave: bool  # whether queued FLOW jobs may join a running group

    def dispatch(self, work: Callable[[], None]) -> None:
        """Run ``work`` (a group's whole run, its failure policy included), now or on a thread of its own."""

    def run(self, context: RunContext, group: list[Job]) -> None:
        """Make the group's frames and end its jobs; raise when it fails."""

    def resolve_device(self, requested: str, default_device: str) -> str:
        """The device a job's frames are made on; ValueError when there is no such device."""

    def stop(self) -> None: ...


class LocalExecutor:
    """One group at a time on the manager's worker thread, by the runner of the job's kind."""

    interleave = True

    def dispatch(self, work: Callable[[], None]) -> None:
        work()

    def run(self, context: RunContext, group: list[Job]) -> None:
        runner_for(group[0].request).run(context, group)

    def resolve_device(self, requested: str, default_device: str) -> str:
        return resolve_device(default_device if requested == "auto" else requested)

    def stop(self) -> None:
        pass


class JobManager:
    """The job table, the queue and the worker thread that hands groups of jobs to the executor.

    ``executor``: where groups run (``LocalExecutor``: here, one at a time; the Ray ingress
    injects its own). ``job_class``: the job type kept (the Ray ingress keeps more per job).
    ``on_end``: called with every job that ends (a Ray replica wakes its caller with it).
    ``pipelines``: where loaded pipelines are kept (default: ``max_pipelines`` of them here).
    """

    def __init__(self, storage: Storage, default_device: str = "auto", max_pipelines: int = 1,
                 max_jobs_kept: int = 200, speed: SpeedOptions | None = None, executor: Executor | None = None,
                 job_class: type[Job] = Job, pipelines: PipelineCache | None = None) -> None:
        self.storage = storage
        self.executor: Executor = executor or LocalExecutor()
        self.job_class = job_class
        self.on_end: list[Callable[[Job], None]] = []
        self.speed = speed or SpeedOptions()  # the GPU path's options (engine/models/pipelines.py)
        self.default_device = resolve_device(default_device)
        # A Ray replica passes its own: the loaded pipelines Serve's multiplexer holds (engine/ray/routing.py).
        self.pipelines = pipelines if pipelines is not None else PipelineCache(max_pipelines)
        self.max_jobs_kept = max_jobs_kept
        self.jobs: dict[str, Job] = {}
        # Round robin across tokens with work waiting (engine/jobs/fair_queue.py), FIFO within one.
        self._queue = FairQueue()
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run_worker, name="vf-engine-worker", daemon=True)
        self.writer = FrameWriter(storage)
        # What runners get instead of the manager; before_denoise stays a method here (the test seam).
        self.context = RunContext(storage, self.pipelines, self.writer,
                                  lambda job, frames: self.before_denoise(job, frames),
                                  lambda job, status: self._finish(job, status), self._join_group)
        self._group: list[Job] = []  # the group the local worker is running (FLOW jobs join it)

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel_event.set()
        self._queue.put(None)
        self._worker.join(timeout=10)
        self.executor.stop()

    def queue_length(self) -> int:
        return sum(1 for j in self.jobs.values() if j.status in ("queued", "running"))

    # Submit (HTTP thread) -----------------------------------------------------

    def submit(self, request: JobRequest, owner: str = "default") -> Job:
        """Check the request against the engine's state, compute cache keys, queue it for ``owner``."""
        job = submit_job(request, self.storage, self.resolve_job_device, self.speed, self.job_class)
        return self._register(job, owner)

    def _register(self, job: Job, owner: str = "default") -> Job:
        """Mark cached frames done, add the job to the table and queue it unless all is cached."""
        job.owner = owner
        for number, fkey in job.frame_keys.items():
            if self.storage.has_frame(fkey):
                job.done[number] = fkey
                job.cached.append(number)
        with self._lock:
            self._forget_old_jobs(owner)
            self.jobs[job.id] = job
        if len(job.done) == len(job.frame_keys):
            job.status = job.phase = "done"
            job.finished = time.time()
        else:
            self.pin_blobs()
            self._queue.put(job.id, owner)
        logger.info("Job %s (%s, %s): %d frames, %d from cache", job.id, job.request.shot, job.request.generator,
                    len(job.frame_keys), len(job.cached))
        return job

    def resolve_job_device(self, requested: str) -> str:
        """The device a job runs on ('auto': the engine's); ValueError when it does not exist here."""
        return self.executor.resolve_device(requested, self.default_device)

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job with id '{job_id}' (the engine keeps the last {self.max_jobs_kept} jobs "
                           "and forgets all jobs when it restarts; resubmit: finished frames come from the cache)",
                           code="unknown_job")
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        job.cancel_event.set()
        if job.status == "queued":
            self._finish(job, "cancelled")
        return job

    def frame_path(self, job_id: str, frame: int) -> Path:
        job = self.get(job_id)
        if frame not in job.frame_keys:
            raise NotFound(f"frame {frame} is not part of job {job_id}", code="unknown_frame")
        if frame not in job.done:
            raise NotFound(f"frame {frame} of job {job_id} is not finished yet (status: {job.status})",
                           code="frame_not_ready")
        return self.storage.frame_path(job.done[frame])

    def _forget_old_jobs(self, owner: str = "default") -> None:
        """Make room for ``owner``'s new job in the table (under ``_lock``).

        Finished jobs are kept small (their request without its frames: a few hundred bytes, not
        the megabytes an 8 MiB body parses to). Past ``max_jobs_kept`` the submitter's own
        oldest finished jobs go first, then those of the token holding the most: cheap cached
        submits of one token never push another's finished, unfetched job out.
        """
        finished = [j for j in self.jobs.values() if j.status in ("done", "cancelled", "failed")]
        for job in finished:
            if job.request.frames:
                job.request = job.request.model_copy(update={"frames": [], "prompt_keys": [], "characters": []})
        excess = len(self.jobs) - self.max_jobs_kept + 1
        if excess <= 0:
            return
        held = Counter(j.owner for j in self.jobs.values())
        finished.sort(key=lambda j: (j.owner != owner, -held[j.owner], j.created))
        for job in finished[:excess]:
            del self.jobs[job.id]

    def _finish(self, job: Job, status: str, error: EngineFault | None = None) -> None:
        job.finish(status, error)
        self.pin_blobs()
        for listener in self.on_end:
            listener(job)

    def blobs_in_use(self) -> set[str]:
        """Every blob a queued or running job still has to read: never evicted (engine/storage.py)."""
        shas: set[str] = set()
        for job in list(self.jobs.values()):
            if job.status in ("queued", "running"):
                shas |= request_blobs(job.request)
        return shas

    def pin_blobs(self) -> None:
        """Record ``blobs_in_use`` for `cache prune` in any process (after each job added or ended)."""
        try:
            pin(self.storage, self.blobs_in_use())
        except OSError as exc:
            logger.warning("Could not record the blobs in use: %s", exc)

    # Worker thread ------------------------------------------------------------

    def _run_worker(self) -> None:
        """Worker thread: runs queued jobs one after the other until ``stop``.

        Queued FLOW jobs that can share pipeline calls with the job taken run interleaved
        with it (``_flow_companions``); a failure fails every job of that group and no other.
        """
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            job = self.jobs.get(job_id)
            if job is None or job.status != "queued":
                continue
            group = [job, *self._flow_companions([job])] if self.executor.interleave else [job]
            self.executor.dispatch(lambda group=group: self._run_group(group))

    def _run_group(self, group: list[Job]) -> None:
        self._group = group
        try:
            self.executor.run(self.context, group)
        except Exception as exc:  # noqa: BLE001 - the worker must survive any job
            self._fail_group(group, exc)

    def _fail_group(self, group: list[Job], exc: Exception) -> None:
        """The jobs that ran together when ``exc`` was raised end failed, keeping the frames they finished."""
        fault = self._fault(group[0], exc)
        try:
            self.writer.wait()  # frames finished before the failure are kept and listed
        except Exception:  # noqa: BLE001
            logger.exception("Frames of job %s could not be written", group[0].id)
        for member in group:
            if member.status not in ("done", "cancelled", "failed"):
                self._finish(member, "failed", fault)

    def _fault(self, job: Job, exc: Exception) -> EngineFault:
        """What a job that raised ``exc`` reports; out of memory drops the pipeline so the next job reloads it."""
        if isinstance(exc, EngineFault):
            logger.warning("Job %s failed: %s", job.id, exc.message)
            return exc
        if is_out_of_memory(exc):
            self.pipelines.drop(job.key)
            return OutOfMemory(
                f"Out of memory on {job.key.device} at {job.request.width}x{job.request.height} with "
                f"batch size {job.request.batch_size}. Lower the batch size or the resolution, or turn "
                "on attention slicing / CPU offload; finished frames are kept."
            )
        logger.exception("Job %s crashed", job.id, exc_info=exc)
        return EngineFault(f"The engine failed on this job: {type(exc).__name__}: {without_paths(str(exc))[:500]}",
                           code="engine_error")

    def before_denoise(self, job: Job, frames: list[FrameSpec]) -> None:
        """Called with every job's frames just before their pipeline call; does nothing here.

        A test seam: the engine tests inject faults (out of memory on a given frame) by
        overriding it (tests/engine/seams/sitecustomize.py), outside the production path.
        """

    def _join_group(self, running: list[Job]) -> list[Job]:
        """Queued FLOW jobs that join the running group at their first frame; they are part of the
        group from then on, so a failure fails them too."""
        joined = self._flow_companions(running)
        self._group.extend(joined)
        return joined

    def _flow_companions(self, running: list[Job]) -> list[Job]:
        """Queued FLOW jobs to interleave with ``running`` (the first one's models, size and steps), up to
        its batch size in all.

        Taken in submission order and marked running; shots that share a frame's cache key are
        left to run after (they then take those frames from the cache).
        """
        job = running[0]
        request = job.request
        if not interleavable(job) or len(running) >= request.batch_size:
            return []
        keys = {key for member in running for key in member.frame_keys.values()}
        chosen: list[Job] = []
        with self._lock:
            for other in sorted(self.jobs.values(), key=lambda j: j.created):
                if len(running) + len(chosen) >= request.batch_size:
                    break
                if other.status != "queued" or not interleavable(other):
                    continue
                same = (other.key == job.key and other.request.steps == request.steps
                        and (other.request.width, other.request.height) == (request.width, request.height)
                        # the draft tier swaps scheduler, LoRA and VAE for the whole call (engine/models/draft.py)
                        and (other.request.tier, other.request.draft) == (request.tier, request.draft))
                if not same or keys & set(other.frame_keys.values()):
                    continue
                keys |= set(other.frame_keys.values())
                other.status = "running"
                chosen.append(other)
        return chosen
