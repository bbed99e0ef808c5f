"""The Ray Serve ingress's job table: the JobManager's submit, status and cancel, with the
generation sent to worker replicas instead of a local thread.

A job is cut into *units*, each one request for a worker replica (engine/ray/serve.py):
INDEPENDENT shots of at least ``split_min_frames`` frames into up to one unit per replica
(whole batches each, so every frame sees the same batch as on one engine), FLOW shots into
one unit, since each frame is made from the one before. Workers write frames to the shared
frame cache; the ingress reads progress from there and from small per-unit status files.

A unit waits for a free replica in ``FairSlots`` (round robin across tokens, engine/ray/fair.py)
and goes to Serve with its pipeline as the multiplexed model id (engine/ray/routing.py), so it
lands on a replica that holds its model. A unit whose replica dies is sent again: the new
replica takes every finished frame from the cache and goes on from there, so no frame is lost
or made twice. The job table is journaled (engine/ray/journal.py): a restarted ingress resumes
its jobs. This module does not import ray at the top, so the planning can be tested without it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..coherence.strategies import make_strategy
from ..contract.errors import EngineFault, OutOfMemory
from ..contract.schema import FrameSpec, JobRequest
from ..jobs.context import RunContext
from ..jobs.job import Job
from ..jobs.manager import JobManager
from ..jobs.runners import submit_job
from ..models.pipelines import NET_ORDER
from ..storage import Storage, atomic_write
from .fair import FairSlots
from .journal import ENDED, JobJournal, restored_job
from .routing import model_id

logger = logging.getLogger(__name__)

POLL_S = 0.2
# Attempts per unit: a replica death (or a node lost) sends the unit to another replica, after
# a pause that doubles from RETRY_S (Serve needs a moment to see a lost node's replicas gone).
MAX_ATTEMPTS = 6
RETRY_S = 0.5


@dataclass
class Unit:
    """Frames of one job that one worker replica generates in one call."""

    id: str
    frames: list[int]
    attempts: int = 0
    status: str = "queued"
    replica: str | None = None
    pid: int | None = None
    started: float | None = None
    finished: float | None = None
    phase: str = "queued"
    step: int = 0
    from_cache: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    response: Any = None
    model: str | None = None  # the multiplexed model id: the job's pipeline key (engine/ray/routing.py)
    loaded: bool | None = None  # whether the replica had to load the pipeline for this unit

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "frames": list(self.frames), "status": self.status, "replica": self.replica,
                "pid": self.pid, "attempts": self.attempts, "started": self.started, "finished": self.finished,
                "from_cache": list(self.from_cache), "model": self.model, "loaded": self.loaded}


@dataclass
class RayJob(Job):
    """A Job plus where it ran: its units and the faults it survived."""

    units: list[Unit] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["started"], out["finished"] = self.started, self.finished
        out["replicas"] = [u.to_json() for u in self.units]
        out["events"] = list(self.events)
        return out


def plan_units(batches: Sequence[Sequence[FrameSpec]], sequential: bool, replicas: int,
               split_min_frames: int) -> list[list[int]]:
    """Frame numbers per unit: whole batches, contiguous, as even as the batches allow."""
    frames = [f.frame for batch in batches for f in batch]
    if not frames:
        return []
    if sequential or replicas <= 1 or len(frames) < 2 * split_min_frames:
        return [frames]
    count = max(1, min(replicas, len(batches), len(frames) // split_min_frames))
    # A batch goes to the unit its first frame falls in, were the frames cut in equal parts.
    units: list[list[int]] = [[] for _ in range(count)]
    start = 0
    for batch in batches:
        units[min(count - 1, start * count // len(frames))].extend(f.frame for f in batch)
        start += len(batch)
    return [unit for unit in units if unit]


def unit_status_dir(storage: Storage) -> Path:
    return storage.root / "ray" / "units"


def write_unit_status(storage: Storage, unit_id: str, record: dict[str, Any]) -> None:
    atomic_write(unit_status_dir(storage) / f"{unit_id}.json", json.dumps(record).encode())


def read_unit_status(storage: Storage, unit_id: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads((unit_status_dir(storage) / f"{unit_id}.json").read_bytes()))
    except (OSError, ValueError):
        return None


def is_replica_lost(exc: BaseException) -> bool:
    """A replica (or its node) went away under the call, as opposed to the job failing."""
    try:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, NodeDiedError, RayActorError
        from ray.serve.exceptions import ReplicaUnavailableError
    except ImportError:  # pragma: no cover - only without ray
        return False
    return isinstance(exc, (RayActorError, ActorDiedError, ActorUnavailableError, NodeDiedError,
                            ReplicaUnavailableError))


def is_request_cancelled(exc: BaseException) -> bool:
    try:
        from ray.exceptions import TaskCancelledError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, TaskCancelledError)


CallUnit = Callable[[str, dict[str, Any], "str | None"], Any]


class RayExecutor:
    """The executor of the Ray ingress's JobManager: every job on a thread of its own, cut into
    units sent to worker replicas (``call_unit(unit_id, request_json, model_id)`` starts one unit
    on some replica, routed by ``model_id`` unless None, and returns a Serve DeploymentResponse:
    ``result()``, ``cancel()``)."""

    interleave = False  # jobs run side by side on replicas; FLOW shots are not batched together here

    def __init__(self, storage: Storage, call_unit: CallUnit, worker_device: str, replicas: int,
                 split_min_frames: int = 8, model_routing: bool = True) -> None:
        self.storage = storage
        self.call_unit = call_unit
        self.worker_device = worker_device
        self.replicas = replicas
        self.split_min_frames = split_min_frames
        self.model_routing = model_routing
        self._pool = ThreadPoolExecutor(max_workers=512, thread_name_prefix="vf-ray-job")
        # One unit in Serve per replica: a unit is sent when a replica is free. Serve's router
        # holds the others and looks again after a backoff that grows to 0.5 s, leaving the
        # replica idle between units (docs/shared-engine.md "Many GPUs"). The units waiting for a
        # replica are served round robin across tokens (engine/ray/fair.py).
        self.slots = FairSlots(replicas)

    def dispatch(self, work: Callable[[], None]) -> None:
        self._pool.submit(work)

    def resolve_device(self, requested: str, default_device: str) -> str:
        """Cache keys name the device the frames are made on: the workers', not the ingress's."""
        if requested in ("auto", self.worker_device):
            return self.worker_device
        if requested == "cpu":
            return "cpu"
        raise ValueError(f"device '{requested}' was asked for but the engine's replicas run on "
                         f"'{self.worker_device}'; use 'auto' or '{self.worker_device}'")

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run(self, context: RunContext, group: list[Job]) -> None:
        """Job thread: cut into units, run them on replicas, follow progress, merge results."""
        job = group[0]
        assert isinstance(job, RayJob)
        request = job.request
        # 1. Units over the frames not yet made.
        strategy = make_strategy(request.coherence)
        nets = [n for n in NET_ORDER if job.refs.get(n) is not None]

        def active_nets(frame: FrameSpec) -> tuple[str, ...]:
            return tuple(n for n in nets if getattr(frame, n) is not None)

        todo = [f for f in request.frames if f.frame not in job.done]
        # A video job's windows and a finalize job's frames chain from first to last: one unit,
        # on one replica, like FLOW.
        chained = request.job_kind() in ("video", "finalize")
        sequential = strategy.sequential or chained
        batches = [todo] if chained else list(strategy.batches(todo, request.batch_size, active_nets))
        plan = plan_units(batches, sequential, self.replicas, self.split_min_frames)
        job.units = [Unit(id=f"{job.id}-{i}", frames=frames, model=model_id(job.key)) for i, frames in enumerate(plan)]
        # Running from here on (a cancel now stops the units); the phase stays "queued" until a
        # replica takes a unit.
        job.status, job.started = "running", time.time()
        run_started = time.perf_counter()
        # 2. Every unit on its own thread: a Serve call blocks until its replica is done.
        futures: list[Future[None]] = [self._pool.submit(self._run_unit, job, unit) for unit in job.units]
        failure: EngineFault | None = None
        while True:
            finished = all(f.done() for f in futures)
            self._follow(job, run_started, final=finished)
            for f in futures:
                if f.done() and f.exception() is not None and failure is None:
                    exc = f.exception()
                    failure = exc if isinstance(exc, EngineFault) else EngineFault(
                        f"The engine failed on this job: {type(exc).__name__}: {exc}", code="engine_error")
                    job.cancel_event.set()  # the other units stop: the job has failed
            if job.cancel_event.is_set():
                for unit in job.units:
                    if unit.response is not None and unit.status in ("queued", "running"):
                        unit.response.cancel()
            if finished:
                break
            # Wakes as soon as every unit has ended (or one failed), else after POLL_S.
            wait(futures, timeout=POLL_S, return_when=FIRST_EXCEPTION)
        # 3. Result: the first failure wins; else done unless cancelled before the end.
        job.timings["run_s"] = time.perf_counter() - run_started
        for unit in job.units:
            unit_file = unit_status_dir(self.storage) / f"{unit.id}.json"
            unit_file.unlink(missing_ok=True)
        if failure is not None:
            raise failure
        context.finish(job, "cancelled" if len(job.done) < len(job.frame_keys) else "done")

    def _follow(self, job: RayJob, run_started: float, final: bool = False) -> None:
        """Progress from the units' status files and, for units a replica has taken, the shared cache."""
        running = [u for u in job.units if u.status == "running"]
        for unit in running:
            record = read_unit_status(self.storage, unit.id)
            if record:
                unit.phase, unit.step = record.get("phase", unit.phase), int(record.get("step", 0))
                unit.replica, unit.pid = record.get("replica", unit.replica), record.get("pid", unit.pid)
                unit.started = unit.started or record.get("started")
                for key in ("load_s", "model_s"):
                    if key in record.get("timings", {}):
                        job.timings[key] = max(job.timings[key], float(record["timings"][key]))
                if record.get("pipeline_reused") is not None:
                    job.pipeline_reused = bool(record["pipeline_reused"])
                    unit.loaded = not job.pipeline_reused
        # Only frames of units a replica took (or finished): queued jobs cost no disk look-ups.
        for unit in job.units:
            if unit.started is None and unit.finished is None:
                continue
            for number in unit.frames:
                fkey = job.frame_keys[number]
                if number not in job.done and self.storage.has_frame(fkey):
                    job.done[number] = fkey
        generated = len(job.done) - len(job.cached)
        if final:
            # The units' own figures: model time summed over replicas, the longest load.
            job.timings["model_s"] = max(job.timings["model_s"], sum(u.timings.get("model_s", 0.0) for u in job.units))
            job.timings["load_s"] = max([job.timings["load_s"], *(u.timings.get("load_s", 0.0) for u in job.units)])
        if running:
            phases = {u.phase for u in running}
            job.phase = "loading" if phases == {"loading"} else "generating" if "generating" in phases else job.phase
            job.step = max(u.step for u in running)
        job.update_eta(run_started, generated)

    def _run_unit(self, job: RayJob, unit: Unit) -> None:
        """Unit thread: one Serve call per attempt, each after its token's turn for a free replica;
        a lost replica means another attempt, after a pause."""
        request = job.request
        frames = set(unit.frames)
        sequential = make_strategy(request.coherence).sequential or request.job_kind() in ("video", "finalize")
        body = request if sequential else request.model_copy(
            update={"frames": [f for f in request.frames if f.frame in frames]})
        payload = body.model_dump(mode="json")
        while unit.attempts < MAX_ATTEMPTS:
            if not self.slots.acquire(job.owner, job.cancel_event.is_set, POLL_S):
                unit.status = "cancelled"
                return
            unit.attempts += 1
            unit.status = "running"
            try:
                result = self._call(job, unit, payload)
            finally:
                self.slots.release()
            if result is not None:
                self._unit_result(unit, result)
                return
            # The replica was lost: Serve replaces it meanwhile (a lost node's, once it sees it gone).
            job.cancel_event.wait(RETRY_S * 2 ** (unit.attempts - 1))
        unit.status = "failed"
        raise EngineFault(f"replicas were lost {MAX_ATTEMPTS} times on frames {unit.frames[0]}-{unit.frames[-1]}; "
                          "finished frames are kept: check the Ray cluster (ray status) and resubmit",
                          code="replica_lost")

    def _call(self, job: RayJob, unit: Unit, payload: dict[str, Any]) -> dict[str, Any] | None:
        """One attempt: the unit's result; None when its replica was lost (an event says so)."""
        try:
            unit.response = self.call_unit(unit.id, payload, unit.model if self.model_routing else None)
            return dict(unit.response.result())
        except Exception as exc:  # noqa: BLE001 - sorted below
            if is_request_cancelled(exc) or job.cancel_event.is_set() and not is_replica_lost(exc):
                unit.status, unit.finished = "cancelled", time.time()
                return {"status": "cancelled"}
            if not is_replica_lost(exc):
                unit.status, unit.finished = "failed", time.time()
                raise
            lost = type(exc).__name__
        missing = sorted(n for n in unit.frames if n not in job.done and not self.storage.has_frame(job.frame_keys[n]))
        event = (f"replica {unit.replica or '?'} (pid {unit.pid or '?'}) was lost during frames "
                 f"{unit.frames[0]}-{unit.frames[-1]} ({lost}); {len(missing)} unfinished "
                 f"frame(s) sent to another replica, finished frames kept")
        logger.warning("Job %s: %s", job.id, event)
        job.events.append(event)
        unit.replica = unit.pid = None
        return None

    def _unit_result(self, unit: Unit, result: dict[str, Any]) -> None:
        """What the replica answered: where it ran, whether it loaded; a failed unit raises."""
        if result.get("status") == "cancelled" and "replica" not in result:
            return  # cancelled before the replica answered (``_call``)
        unit.status, unit.finished = result.get("status", "failed"), time.time()
        unit.replica, unit.pid = result.get("replica", unit.replica), result.get("pid", unit.pid)
        unit.model, unit.loaded = result.get("model", unit.model), result.get("loaded", unit.loaded)
        # Frames the replica found finished (by an earlier attempt or another job) and did not redo.
        unit.from_cache = [n for n in result.get("cached_frames", []) if n in set(unit.frames)]
        unit.timings = {k: float(v) for k, v in (result.get("timings") or {}).items()}
        if result.get("status") == "failed":
            error = result.get("error") or {}
            code = error.get("code", "engine_error")
            message = error.get("message", "the replica failed on this job")
            raise OutOfMemory(message) if code == "out_of_memory" else EngineFault(
                message, code=code, status=int(result.get("http_status", 500)), field=error.get("field"))


class RayJobManager(JobManager):
    """Jobs validated and keyed here (same code as one engine), generated on worker replicas.

    A JobManager with a ``RayExecutor`` injected; the data folder is shared with the workers.
    Every job is journaled there too (engine/ray/journal.py), so that a restarted ingress
    resumes them (``restore``).
    """

    def __init__(self, storage: Storage, call_unit: CallUnit, worker_device: str, replicas: int,
                 split_min_frames: int = 8, max_jobs_kept: int = 200, model_routing: bool = True) -> None:
        executor = RayExecutor(storage, call_unit, worker_device, replicas, split_min_frames, model_routing)
        super().__init__(storage, default_device="cpu", max_pipelines=0, max_jobs_kept=max_jobs_kept,
                         executor=executor, job_class=RayJob)
        # The device the engine reports (GET /health): the workers'.
        self.default_device = worker_device
        self.journal = JobJournal(storage)
        self.on_end.append(self.journal.record)

    def submit(self, request: JobRequest, owner: str = "default") -> Job:
        job = super().submit(request, owner)
        self.journal.record(job)
        return job

    def restore(self) -> int:
        """At the ingress's start: the journaled jobs back in the table, the unfinished ones queued
        to resume after the frames the cache holds. How many resume."""

        def build(request: JobRequest) -> Job:
            return submit_job(request, self.storage, self.resolve_job_device, self.speed, self.job_class)

        jobs = [restored_job(entry, build, self.job_class, self.storage.has_frame) for entry in self.journal.entries()]
        with self._lock:  # all of them first: queueing one may forget the oldest ended ones
            self.jobs.update((job.id, job) for job in jobs)
        resumed = [job for job in jobs if job.status not in ENDED]
        for job in resumed:
            assert isinstance(job, RayJob)
            job.events.append("the engine's ingress restarted; the job was resumed, taking the frames finished "
                              "before from the cache")
            self._register(job, job.owner)
        logger.info("Journal: %d job(s) restored, %d resumed", len(jobs), len(resumed))
        return len(resumed)

    def _forget_old_jobs(self, owner: str = "default") -> None:
        super()._forget_old_jobs(owner)
        self.journal.keep_only(set(self.jobs))
