"""The batched runner: INDEPENDENT frames, up to ``batch_size`` per pipeline call. Worker thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..coherence.strategies import IndependentCoherence
from ..models.batch import run_batch
from .session import image_session
from .shot import Shot, identity_batch

if TYPE_CHECKING:
    from .context import RunContext
    from .job import Job


class BatchRunner:
    """INDEPENDENT jobs: frames in batches that share nets, per-frame settings and visible characters."""

    def run(self, context: RunContext, group: list[Job]) -> None:
        with image_session(context, group[0]) as (models, plan):
            shot = Shot(context, group[0], models, plan)
            run_batched(context, shot)
        # Done only once the pipeline is back as loaded (draft tier and identity plan released).
        context.complete(group[0], shot.run_started)


def run_batched(context: RunContext, shot: Shot) -> None:
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
        batch = [f for f in batch if not context.take_from_cache(job, f)]
        if not batch:
            continue
        # 3. Inputs: control maps, seeds, prompts, identity conditioning.
        nets = shot.nets(batch[0])
        maps = {name: [context.decode(name, getattr(f, name), request) for f in batch] for name in nets}
        context.before_denoise(job, batch)
        settings = shot.settings(batch)
        extra, processors = identity_batch(context, job, shot.models, plan, batch, settings)
        # 4. Denoise and decode; progress and cancel per step (callbacks.CancelCallback).
        job.step = 0
        with processors:
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
            context.store_frame(job, frame.frame, pixels)
        shot.made(batch)
