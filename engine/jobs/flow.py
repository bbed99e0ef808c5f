"""The FLOW runner: each frame from its shot's previous frame warped along the exact flow.

Queued FLOW shots that can share pipeline calls run interleaved, frame t of every shot in one
call (engine/COHERENCE.md "Cross-shot batching"); frames and cache keys are those of the shots
run one after another. Worker thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..coherence.strategies import Carried, ColorStats, FlowCoherence, color_stats
from ..models.batch import run_batch, run_img2img
from .session import image_session
from .shot import Shot, identity_batch

if TYPE_CHECKING:
    from ..characters.identity import IdentityPlan
    from ..contract.schema import FrameSpec
    from ..models.pipelines import LoadedModels
    from .context import RunContext
    from .job import Job

logger = logging.getLogger(__name__)


class FlowRunner:
    """FLOW jobs: the group's shots interleaved; FLOW jobs queued meanwhile join at their first frame."""

    def run(self, context: RunContext, group: list[Job]) -> None:
        with image_session(context, group[0]) as (models, plan):
            run_flow(context, [FlowShot(context, group[0], models, plan),
                               *(flow_shot(context, other, models) for other in group[1:])])


def interleavable(job: Job) -> bool:
    """A FLOW shot whose frames may share pipeline calls with another shot's (no identity conditioning)."""
    request = job.request
    return (request.job_kind() == "flow"
            and not (request.characters or request.style_reference or request.palette_reference))


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
        self.context.store_frame(self.job, step.frame.frame, result)
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


def run_flow(context: RunContext, shots: list[FlowShot]) -> None:
    """Worker thread: FLOW frames, each from its shot's previous frame warped along the flow.

    A shot's frames are sequential, but frame t of several shots (jobs interleaved by
    the job manager's worker) can denoise in one batch. Holds O(1) frames per shot: the previous
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
            active += [flow_shot(context, job, models) for job in context.companions([s.job for s in active])]
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
                context.complete(shot.job, shot.run_started)
            else:
                steps.append(step)
        # 3. Frames that can share a pipeline call, up to the batch size.
        for batch in flow_batches(steps, batch_size):
            # 4. Denoise: from noise at keyframes, else img2img from the warped frames.
            images = denoise_flow(context, batch, models)
            if images is None:
                continue  # every job of the batch was cancelled: step 2 completes them
            # 5. Colour and paste, then to the writer; the anchor is the shot's first frame.
            for step, image in zip(batch, images, strict=True):
                step.shot.finish(step, image)


def flow_shot(context: RunContext, job: Job, models: LoadedModels) -> FlowShot:
    """A FLOW job joining an interleaved run (it has no identity conditioning: ``interleavable``)."""
    job.status, job.phase, job.started, job.pipeline_reused = "running", "generating", time.time(), True
    return FlowShot(context, job, models, None)


def denoise_flow(context: RunContext, batch: list[FlowStep], models: LoadedModels) -> list[Any] | None:
    """One pipeline call for ``batch`` (frames of different shots); None when all its jobs were cancelled."""
    from PIL import Image

    first = batch[0]
    jobs = [step.shot.job for step in batch]
    frames = [step.frame for step in batch]
    nets = first.shot.nets(first.frame)
    maps = {name: [context.decode(name, getattr(f, name), first.shot.job.request) for f in frames]
            for name in nets}
    for step in batch:
        context.before_denoise(step.shot.job, [step.frame])
    settings = first.shot.settings([first.frame])
    extra, processors = identity_batch(context, first.shot.job, models, first.shot.plan, frames[:1], settings)
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
    with processors:
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
