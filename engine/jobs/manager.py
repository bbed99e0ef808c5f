"""Jobs: validated at submit on the HTTP thread, run one at a time on a worker thread.

HTTP handlers only read job fields and set events; they never wait on the model.
Finished frames go straight to the frame cache on disk, so memory does not grow
with shot length and a cancelled or failed job keeps every frame it finished.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import ALGORITHM_VERSION
from ..characters.inputs import FrameRegions, check_characters, frame_regions, identity_cache_inputs
from ..coherence.strategies import (
    Carried,
    CoherenceStrategy,
    ColorStats,
    FlowCoherence,
    IndependentCoherence,
    color_stats,
    make_strategy,
)
from ..models.draft import DraftTier, check_draft, draft_request
from ..models.draft import cache_inputs as draft_inputs
from ..contract.errors import BadRequest, EngineFault, NotFound, OutOfMemory, is_out_of_memory
from .finalize import cache_inputs as finalize_inputs
from .finalize import finalize_strategy, run_finalize
from ..characters.identity import IdentityPlan
from ..characters.ip_adapter import IpAdapterRef, resolve_ip_adapter
from ..models.refs import ModelRef, resolve_ref
from ..models.pipelines import (
    NET_ORDER,
    BatchSettings,
    LoadedModels,
    PipelineCache,
    PipelineKey,
    SpeedOptions,
    decode_depth,
    decode_rgb,
    load_models,
    resolve_device,
    run_batch,
    run_img2img,
)
from ..models.prompt_blend import PromptEmbeddings
from ..contract.schedule import FrameValues, frame_values, job_warnings
from ..contract.schema import FrameSpec, JobRequest
from ..storage import Storage, canonical_hash
from ..models.upscale import check_upscaler_path
from .context import RunContext
from .job import Job
from .writer import FrameWriter

logger = logging.getLogger(__name__)

@functools.lru_cache(maxsize=1024)
def _text_digest(text: str) -> str:
    """A prompt's digest for cache keys: a long prompt shared by many frames is hashed once."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Shot:
    """One job's frames as a run function sees them: per-frame values, nets, pipeline settings, progress."""

    def __init__(self, context: RunContext, job: Job, models: LoadedModels, plan: IdentityPlan | None) -> None:
        request = job.request
        self.context, self.job, self.models, self.plan = context, job, models, plan
        job.phase, job.detail = "generating", {}
        # Per-frame values (engine/contract/schedule.py); prompts encoded once per job when blended.
        self.values: dict[int, FrameValues] = {f.frame: frame_values(request, f) for f in request.frames}
        self.embeddings = PromptEmbeddings(models.base, request.negative_prompt)
        self.run_started = time.perf_counter()
        self.generated = 0
        self._visible: dict[int, tuple[int, ...]] = {}

    def settings(self, batch: list[FrameSpec]) -> BatchSettings:
        request = self.job.request
        first = self.values[batch[0].frame]
        return BatchSettings(
            prompt=first.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
            guidance_scale=first.guidance_scale, width=request.width, height=request.height,
            weights={"depth": first.depth_weight, "pose": first.pose_weight},
            control_start=first.control_start, control_end=first.control_end,
            prompt_embeds=(self.embeddings.batch([self.values[f.frame] for f in batch])
                           if first.blend is not None else None),
        )

    def nets(self, frame: FrameSpec) -> tuple[str, ...]:
        return tuple(n for n in NET_ORDER if n in self.models.nets and getattr(frame, n) is not None)

    def group(self, frame: FrameSpec) -> tuple[Any, ...]:
        """Frames batch with frames that show the same characters: a frame nobody is in costs nothing extra."""
        request = self.job.request
        if self.plan is None or not request.characters:
            return (self.nets(frame), self.values[frame.frame].batch_group())
        if frame.frame not in self._visible:
            regions = frame_regions(self.context.storage, request, frame.mask)
            self._visible[frame.frame] = regions.visible if regions else ()
        return (self.nets(frame), self.values[frame.frame].batch_group(), self._visible[frame.frame])

    def made(self, frames: list[FrameSpec]) -> None:
        """``frames`` handed to the writer: progress and the time left."""
        self.generated += len(frames)
        job = self.job
        remaining = len(job.frame_keys) - len(job.done.keys() | {f.frame for f in frames})
        job.eta_s = (time.perf_counter() - self.run_started) / self.generated * remaining


@dataclass
class FlowStep:
    """A FLOW shot's next frame: from noise (``carried`` None: a keyframe) or from the warped previous frame."""

    shot: FlowShot
    index: int
    frame: FrameSpec
    carried: Carried | None


class FlowShot(Shot):
    """A FLOW shot's place in its frames: the previous frame, the colour anchor, the keyframes so far."""

    def __init__(self, context: RunContext, job: Job, models: LoadedModels, plan: IdentityPlan | None) -> None:
        super().__init__(context, job, models, plan)
        self.strategy = FlowCoherence(self.job.request.coherence)
        self.ordered = self.strategy.order(self.job.request.frames)
        self.position = 0
        self.previous: FrameSpec | None = None
        self.anchor: ColorStats | None = None
        self.keyframes: list[int] = []

    def next_step(self) -> FlowStep | None:
        """The next frame to generate, carried along the flow; None when the shot is finished or cancelled."""
        context, job, strategy = self.context, self.job, self.strategy
        while self.position < len(self.ordered):
            if job.cancel_event.is_set():
                return None
            index, frame = self.position, self.ordered[self.position]
            self.position += 1
            # 1. Done already (this job, the cache, or another job since submit).
            if frame.frame in job.done or context.take_from_cache(job, frame):
                self.previous = frame
                continue
            if self.plan is not None and self.plan.palette is not None:
                self.anchor = self.plan.palette  # the film's palette, not the shot's first frame (issue 9)
            elif index > 0 and self.anchor is None and strategy.method.color_match:
                self.anchor = color_stats(context.read_frame(job, self.ordered[0]))
            # 2. Carry the previous frame along the flow, unless this is a keyframe or a cut.
            reason = strategy.keyframe_reason(index, frame, self.previous)
            carried: Carried | None = None
            if reason is None:
                carried, reason = context.carry(job, strategy, frame, self.previous)
            if reason is not None:
                self.keyframes.append(frame.frame)
                logger.info("Job %s frame %d: keyframe (%s)", job.id, frame.frame, reason)
            return FlowStep(self, index, frame, carried)
        return None

    def finish(self, step: FlowStep, image: Any) -> None:
        """Colour and paste the generated frame, then hand it to the writer."""
        palette = self.plan is not None and self.plan.palette is not None
        result = self.strategy.finish(np.asarray(image.convert("RGB")), step.carried,
                                      self.anchor if step.index > 0 or palette else None)
        if step.index == 0 and not palette:
            self.anchor = color_stats(result)
        self.context.writer.put(self.job, step.frame.frame, self.job.frame_keys[step.frame.frame], result)
        self.previous = step.frame
        self.made([step.frame])


def flow_batches(steps: list[FlowStep], batch_size: int) -> list[list[FlowStep]]:
    """FLOW frames (one per shot) that can share a pipeline call, up to ``batch_size`` a call.

    Shared: keyframe or carried, the control nets, the per-frame settings but the prompt,
    the strength and the method. A shot with identity conditioning or blended prompts
    runs alone.
    """
    groups: dict[tuple[Any, ...], list[list[FlowStep]]] = {}
    for step in steps:
        values = step.shot.values[step.frame.frame]
        if step.shot.plan is not None or values.blend is not None:
            key: tuple[Any, ...] = (id(step),)
        else:
            key = (step.carried is None, step.shot.nets(step.frame), values.batch_group()[2:],
                   None if step.carried is None else values.strength, step.shot.strategy.method)
        batches = groups.setdefault(key, [[]])
        if len(batches[-1]) >= batch_size:
            batches.append([])
        batches[-1].append(step)
    return [batch for batches in groups.values() for batch in batches]


class JobManager:
    """The job table, the queue and the single worker thread that owns the models."""

    # Subclasses (engine/ray/serve.py's ingress) may keep more per job.
    job_class: type[Job] = Job

    def __init__(self, storage: Storage, default_device: str = "auto", max_pipelines: int = 1,
                 max_jobs_kept: int = 200, speed: SpeedOptions | None = None) -> None:
        self.storage = storage
        self.speed = speed or SpeedOptions()  # the GPU path's options (engine/models/pipelines.py)
        self.default_device = resolve_device(default_device)
        self.pipelines = PipelineCache(max_pipelines)
        self.max_jobs_kept = max_jobs_kept
        self.jobs: dict[str, Job] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run_worker, name="vf-engine-worker", daemon=True)
        self.writer = FrameWriter(storage)
        # What runners get instead of the manager; before_denoise stays a method here (the test seam).
        self.context = RunContext(storage, self.pipelines, self.writer,
                                  lambda job, frames: self.before_denoise(job, frames),
                                  lambda job, status: self._finish(job, status))

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel_event.set()
        self._queue.put(None)
        self._worker.join(timeout=10)

    def queue_length(self) -> int:
        return sum(1 for j in self.jobs.values() if j.status in ("queued", "running"))

    # Submit (HTTP thread) -----------------------------------------------------

    def submit(self, request: JobRequest) -> Job:
        """Check the request against the engine's state, compute cache keys, queue it."""
        if request.generator == "VIDEO":
            from .video import submit_video

            return self._register(submit_video(request, self.storage, self.resolve_job_device, self.job_class))
        # 0. Draft tier (engine/models/draft.py): its references checked, its steps and guidance in the request.
        check_draft(request)
        request = draft_request(request)
        # 1. Models: resolved now so a wrong path is a 400 naming the field.
        spec = request.models
        refs: dict[str, ModelRef | None] = {"base": resolve_ref(spec.base, "models.base", "base")}
        refs["depth"] = resolve_ref(spec.controlnet_depth, "models.controlnet_depth", "controlnet") \
            if spec.controlnet_depth else None
        refs["pose"] = resolve_ref(spec.controlnet_pose, "models.controlnet_pose", "controlnet") \
            if spec.controlnet_pose else None
        lora = resolve_ref(spec.lora, "models.lora", "lora") if spec.lora else None
        # 2. Control maps must have been uploaded.
        # FLOW reads the flow maps too; INDEPENDENT accepts and ignores them.
        names = ("depth", "pose", "flow") if request.coherence.mode == "FLOW" else ("depth", "pose")
        if request.finalize is not None:  # Finalize Take (engine/jobs/finalize.py): flow and the approved frames
            names = ("depth", "pose", "flow", "source")
        for i, frame in enumerate(request.frames):
            for name in names:
                sha = getattr(frame, name)
                if sha is not None and not self.storage.has_blob(sha):
                    raise BadRequest(
                        f"frames[{i}].{name}: blob {sha} is not on the engine; upload it first with "
                        f"PUT /blobs/{sha}", field=f"frames[{i}].{name}", code="missing_blob",
                    )
        # 2b. Characters, references, masks and the film look (engine/characters/inputs.py).
        char_loras = check_characters(request, self.storage)
        ip_ref: IpAdapterRef | None = None
        if spec.ip_adapter and (request.style_reference or any(c.references for c in request.characters)):
            ip_ref = resolve_ip_adapter(spec.ip_adapter, spec.image_encoder)
        identity = identity_cache_inputs(request, char_loras, ip_ref.identity() if ip_ref else None)
        try:
            device = self.resolve_job_device(request.device)
            strategy = make_strategy(request.coherence) if request.finalize is None else finalize_strategy(request)
            if request.finalize is not None:
                check_upscaler_path(request.finalize.upscaler)
        except ValueError as exc:
            field_name = "device" if "device" in str(exc) else "coherence.mode"
            raise BadRequest(str(exc), field=field_name) from exc
        key = PipelineKey(
            base=refs["base"].identity(), depth=refs["depth"].identity() if refs["depth"] else None,
            pose=refs["pose"].identity() if refs["pose"] else None,
            lora=lora.identity() if lora else None, lora_scale=spec.lora_scale if lora else 0.0,
            device=device, attention_slicing=request.attention_slicing,
            cpu_offload=request.cpu_offload and device == "cuda",
            **self.speed.key_fields(device, request.cpu_offload and device == "cuda"),
        )
        # 3. Cache keys, chained in generation order for FLOW: frames already made by any
        #    earlier job are done before queuing.
        frame_keys: dict[int, str] = {}
        previous_key: str | None = None
        shared = self.request_digest(request, key)  # prompts etc. hashed once per job, not per frame
        for f in strategy.order(request.frames):
            frame_keys[f.frame] = previous_key = self.frame_key(request, key, strategy, f, previous_key, identity,
                                                                shared)
        job = self.job_class(id=uuid.uuid4().hex[:16], request=request, refs=refs, lora=lora, key=key,
                             frame_keys=frame_keys, warnings=job_warnings(request), char_loras=char_loras,
                             ip_ref=ip_ref)
        for warning in job.warnings:
            logger.warning("Job %s (%s): %s", job.id, request.shot, warning)
        return self._register(job)

    def _register(self, job: Job) -> Job:
        """Mark cached frames done, add the job to the table and queue it unless all is cached."""
        for number, fkey in job.frame_keys.items():
            if self.storage.has_frame(fkey):
                job.done[number] = fkey
                job.cached.append(number)
        with self._lock:
            self._forget_old_jobs()
            self.jobs[job.id] = job
        if len(job.done) == len(job.frame_keys):
            job.status = job.phase = "done"
            job.finished = time.time()
        else:
            self._queue.put(job.id)
        logger.info("Job %s (%s, %s): %d frames, %d from cache", job.id, job.request.shot, job.request.generator,
                    len(job.frame_keys), len(job.cached))
        return job

    def resolve_job_device(self, requested: str) -> str:
        """The device a job runs on ('auto': the engine's); ValueError when it does not exist here."""
        return resolve_device(self.default_device if requested == "auto" else requested)

    @staticmethod
    def frame_key(request: JobRequest, key: PipelineKey, strategy: CoherenceStrategy, frame: FrameSpec,
                  previous_key: str | None = None, identity: dict[str, Any] | None = None,
                  shared: str | None = None) -> str:
        """Content hash of everything that decides a frame's pixels, and nothing else.

        Batch size, slicing and offload only change speed and memory, so they are left
        out: a repeat with another batch size is still a cache hit. ``shared`` is
        ``request_digest`` computed once for the job; a prompt's text enters by its digest,
        computed once per distinct text (a long prompt is not hashed once per frame).
        Per-frame values (engine/contract/schedule.py) replace the job's under the same names.
        ``identity`` (characters.identity_cache_inputs) and the frame's mask enter only
        when the job has characters or film references, so other jobs keep their keys.
        """
        values = frame_values(request, frame)
        own = values.cache_inputs()
        if isinstance(own["prompt"], str):
            own["prompt"] = _text_digest(own["prompt"])
        coherence = request.coherence.cache_dump()
        if "strength" in coherence:
            coherence["strength"] = values.strength
        extra: dict[str, Any] = {}
        if identity:
            extra = {"identity": identity, "mask": frame.mask if request.characters else None}
        return canonical_hash({
            "request": shared or JobManager.request_digest(request, key),
            **own,
            "coherence": coherence,
            "depth": frame.depth if key.depth else None, "pose": frame.pose if key.pose else None,
            **strategy.cache_inputs(frame, previous_key),
            **extra,
            **({"finalize": finalize_inputs(request, frame)} if request.finalize is not None else {}),
        })

    @staticmethod
    def request_digest(request: JobRequest, key: PipelineKey) -> str:
        """Hash of the job-wide part of every frame key (what no frame can change)."""
        return canonical_hash({
            "algorithm": ALGORITHM_VERSION,
            "models": {"base": key.base, "depth": key.depth, "pose": key.pose, "lora": key.lora,
                       "lora_scale": key.lora_scale},
            "device": key.device, "dtype": key.dtype,
            "negative_prompt": _text_digest(request.negative_prompt), "steps": request.steps,
            "width": request.width, "height": request.height,
            # Draft frames only: final jobs keep the keys they always had.
            **({"draft": draft_inputs(request)} if request.tier == "draft" else {}),
        })

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

    def _forget_old_jobs(self) -> None:
        finished = [j for j in self.jobs.values() if j.status in ("done", "cancelled", "failed")]
        for job in sorted(finished, key=lambda j: j.created)[: max(0, len(self.jobs) - self.max_jobs_kept + 1)]:
            del self.jobs[job.id]

    def _finish(self, job: Job, status: str, error: EngineFault | None = None) -> None:
        job.finish(status, error)

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
            group = [job, *self._flow_companions([job])]
            try:
                self._run_job(job, group[1:])
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
        return EngineFault(f"The engine failed on this job: {type(exc).__name__}: {exc}", code="engine_error")

    def before_denoise(self, job: Job, frames: list[FrameSpec]) -> None:
        """Called with every job's frames just before their pipeline call; does nothing here.

        A test seam: the engine tests inject faults (out of memory on a given frame) by
        overriding it (tests/engine/seams/sitecustomize.py), outside the production path.
        """

    @staticmethod
    def _interleavable(job: Job) -> bool:
        """A FLOW shot whose frames may share pipeline calls with another shot's (no identity conditioning)."""
        request = job.request
        return (request.generator != "VIDEO" and request.coherence.mode == "FLOW" and request.finalize is None
                and not (request.characters or request.style_reference or request.palette_reference))

    def _flow_companions(self, running: list[Job]) -> list[Job]:
        """Queued FLOW jobs to interleave with ``running`` (the first one's models, size and steps), up to
        its batch size in all.

        Taken in submission order and marked running; shots that share a frame's cache key are
        left to run after (they then take those frames from the cache).
        """
        job = running[0]
        request = job.request
        if not self._interleavable(job) or len(running) >= request.batch_size:
            return []
        keys = {key for member in running for key in member.frame_keys.values()}
        chosen: list[Job] = []
        with self._lock:
            for other in sorted(self.jobs.values(), key=lambda j: j.created):
                if len(running) + len(chosen) >= request.batch_size:
                    break
                if other.status != "queued" or not self._interleavable(other):
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

    def _load(self, job: Job) -> LoadedModels:
        def progress(phase: str, detail: dict[str, Any]) -> None:
            job.phase, job.detail = phase, detail

        return load_models(job.key, job.refs, job.lora, progress)

    def _run_job(self, job: Job, companions: list[Job] | None = None) -> None:
        """Worker thread: load (or reuse) the pipeline, then generate the missing frames.

        ``companions``: FLOW jobs interleaved with ``job`` (``_flow_companions``).
        """
        request = job.request
        if request.generator == "VIDEO":
            from .video import run_video

            run_video(self.context, job)
            return
        job.status, job.phase, job.started = "running", "loading", time.time()
        # 1. Pipeline: reused when a previous job had the same model settings.
        t0 = time.perf_counter()
        models, job.pipeline_reused = self.pipelines.get(job.key, lambda: self._load(job))
        job.timings["load_s"] = time.perf_counter() - t0
        models.timings = job.timings  # where a compile warm-up is reported
        # 1a. Draft tier: distillation LoRA, scheduler and tiny VAE swapped in for this job only.
        draft = DraftTier.enter(request, models, job) if request.tier == "draft" else None
        # 1b. Identity conditioning, once per job: references encoded, LoRAs mixed, palette read.
        plan: IdentityPlan | None = None
        try:
            if request.characters or request.style_reference or request.palette_reference:
                plan = IdentityPlan(request, job.char_loras, job.ip_ref, keep_adapters=draft.adapters if draft else [])
                job.identity = plan.stats

                def progress(phase: str, detail: dict[str, Any]) -> None:
                    job.phase, job.detail = phase, detail

                plan.prepare(models, self.storage, progress)
            self._generate(job, models, plan, companions)
        finally:  # the pipeline goes back to how it was loaded, whatever happened
            if plan is not None:
                plan.release(models)
            if draft is not None:
                draft.release(models)

    def _generate(self, job: Job, models: LoadedModels, plan: IdentityPlan | None,
                  companions: list[Job] | None = None) -> None:
        """Worker thread: generate the frames of ``job`` (and its FLOW companions) that are not done yet."""
        request = job.request
        if request.finalize is not None:
            shot = Shot(self.context, job, models, plan)
            todo = [f for f in request.frames if f.frame not in job.done]
            run_finalize(self.context, job, models, shot.settings(todo[:1] or request.frames[:1]), shot.nets,
                         shot.run_started)
        elif request.coherence.mode == "FLOW":
            self._run_flow([FlowShot(self.context, job, models, plan),
                            *(self._flow_shot(other, models) for other in companions or [])])
        else:
            self._run_batched(Shot(self.context, job, models, plan))

    def _run_batched(self, shot: Shot) -> None:
        """Worker thread: INDEPENDENT frames, up to ``batch_size`` per pipeline call.

        Frames share a call when they have the same control nets, per-frame settings and
        visible characters (``Shot.group``).
        """
        job, request, plan = shot.job, shot.job.request, shot.plan
        todo = [f for f in request.frames if f.frame not in job.done]
        for batch in IndependentCoherence(request.coherence).batches(todo, request.batch_size, shot.group):
            # 1. A cancel between batches stops here; one within a step stops the call (4.).
            if job.cancel_event.is_set():
                break
            # 2. Another job may have produced these frames since submit.
            batch = [f for f in batch if not self.context.take_from_cache(job, f)]
            if not batch:
                continue
            # 3. Inputs: control maps, seeds, prompts, identity conditioning.
            nets = shot.nets(batch[0])
            maps = {name: [self.context.decode(name, getattr(f, name)) for f in batch] for name in nets}
            self.before_denoise(job, batch)
            settings = shot.settings(batch)
            extra, context = self._identity_batch(job, shot.models, plan, batch, settings)
            # 4. Denoise and decode; progress and cancel per step (callbacks.CancelCallback).
            job.step = 0
            with context:
                images, model_s = run_batch(shot.models, nets, maps, [shot.values[f.frame].seed for f in batch],
                                            settings, job.on_step, extra=extra, should_stop=job.cancel_event.is_set)
            job.timings["model_s"] += model_s
            if images is None:
                break
            # 5. The film palette, then to the writer: PNG encoding overlaps the next batch's denoising.
            for frame, image in zip(batch, images, strict=True):
                pixels = np.asarray(image.convert("RGB"))
                if plan is not None and plan.palette is not None:
                    pixels = plan.finish(pixels)
                self.writer.put(job, frame.frame, job.frame_keys[frame.frame], pixels)
            shot.made(batch)
        self.context.complete(job, shot.run_started)

    def _identity_batch(self, job: Job, models: LoadedModels, plan: IdentityPlan | None, batch: list[FrameSpec],
                        settings: BatchSettings) -> tuple[dict[str, Any] | None, Any]:
        """Pipeline arguments and processor context of the identity conditioning for ``batch``."""
        import contextlib

        if plan is None:
            return None, contextlib.nullcontext()
        regions: list[FrameRegions | None] = [frame_regions(self.storage, job.request, f.mask) for f in batch]
        extra, context = plan.batch(models, regions, settings.prompt, settings.negative_prompt,
                                    settings.guidance_scale)
        if settings.prompt_embeds is not None and "prompt_embeds" in extra:
            # Prompt travel under regional prompts: the blended shot prompt takes the shot block
            # (the first 77 tokens); the characters' blocks stay constant across frames.
            blended = settings.prompt_embeds["prompt_embeds"]
            embeds = extra["prompt_embeds"].clone()
            embeds[:, : blended.shape[1]] = blended.to(device=embeds.device, dtype=embeds.dtype)
            extra["prompt_embeds"] = embeds
        return extra, context

    # FLOW coherence --------------------------------------------------------------

    def _run_flow(self, shots: list[FlowShot]) -> None:
        """Worker thread: FLOW frames, each from its shot's previous frame warped along the flow.

        A shot's frames are sequential, but frame t of several shots (jobs interleaved by
        ``_run_worker``) can denoise in one batch. Holds O(1) frames per shot: the previous
        frame is read back from the cache or the writer (so a resumed job continues after its
        last cached frame) and the anchor is kept as colour stats. Frames and cache keys are
        those of the shots run one after another.
        """
        models = shots[0].models
        batch_size = shots[0].job.request.batch_size
        active = list(shots)
        while active:
            # 1. FLOW jobs queued since join, up to the batch size (at their first frame).
            if shots[0].plan is None:
                active += [self._flow_shot(job, models) for job in self._flow_companions([s.job for s in active])]
            for shot in active:  # the most shots it shared calls with
                shared = max(len(active), shot.job.detail.get("shots_interleaved", 1))
                shot.job.detail = {"keyframes": shot.keyframes, "shots_interleaved": shared}
            # 2. Every shot's next frame, carried along the flow unless a keyframe or a cut;
            #    a shot that is finished or cancelled completes here.
            steps: list[FlowStep] = []
            for shot in list(active):
                step = shot.next_step()
                if step is None:
                    active.remove(shot)
                    self.context.complete(shot.job, shot.run_started)
                else:
                    steps.append(step)
            # 3. Frames that can share a pipeline call, up to the batch size.
            for batch in flow_batches(steps, batch_size):
                # 4. Denoise: from noise at keyframes, else img2img from the warped frames.
                images = self._denoise_flow(batch, models)
                if images is None:
                    continue  # every job of the batch was cancelled: step 2 completes them
                # 5. Colour and paste, then to the writer; the anchor is the shot's first frame.
                for step, image in zip(batch, images, strict=True):
                    step.shot.finish(step, image)

    def _flow_shot(self, job: Job, models: LoadedModels) -> FlowShot:
        """A FLOW job joining an interleaved run (it has no identity conditioning: ``_interleavable``)."""
        job.status, job.phase, job.started, job.pipeline_reused = "running", "generating", time.time(), True
        return FlowShot(self.context, job, models, None)

    def _denoise_flow(self, batch: list[FlowStep], models: LoadedModels) -> list[Any] | None:
        """One pipeline call for ``batch`` (frames of different shots); None when all its jobs were cancelled."""
        from PIL import Image

        first = batch[0]
        jobs = [step.shot.job for step in batch]
        frames = [step.frame for step in batch]
        nets = first.shot.nets(first.frame)
        maps = {name: [self.context.decode(name, getattr(f, name)) for f in frames] for name in nets}
        for step in batch:
            self.before_denoise(step.shot.job, [step.frame])
        settings = first.shot.settings([first.frame])
        extra, context = self._identity_batch(first.shot.job, models, first.shot.plan, frames[:1], settings)
        if len(batch) > 1:  # other shots' prompts (plans and blended prompts never share a call: flow_batches)
            settings = replace(settings, prompt=[step.shot.values[step.frame.frame].prompt for step in batch],
                               negative_prompt=[job.request.negative_prompt for job in jobs])
        for job in jobs:
            job.step = 0

        def on_step(step: int) -> bool:  # progress for every job; stops when all of them cancelled
            return all([job.on_step(step) for job in jobs])

        def should_stop() -> bool:
            return all(job.cancel_event.is_set() for job in jobs)

        seeds = [step.shot.values[step.frame.frame].seed for step in batch]
        with context:
            if first.carried is None:
                images, model_s = run_batch(models, nets, maps, seeds, settings, on_step, extra=extra,
                                            should_stop=should_stop)
            else:
                carried = [step.carried for step in batch]
                single = len(batch) == 1
                images, model_s = run_img2img(
                    models, nets, {n: m[0] for n, m in maps.items()} if single else maps,
                    Image.fromarray(carried[0].warped) if single else [Image.fromarray(c.warped) for c in carried],
                    first.shot.values[first.frame.frame].strength, seeds[0] if single else seeds, settings, on_step,
                    keep=carried[0].masks.valid if single else [c.masks.valid for c in carried],
                    keep_until=first.shot.strategy.method.keep_until, extra=extra, should_stop=should_stop,
                )
                images = None if images is None else [images] if single else images
        for job in jobs:
            job.timings["model_s"] += model_s / len(jobs)
        return images
