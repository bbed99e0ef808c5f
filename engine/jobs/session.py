"""An image job's session on its pipeline: loaded (or reused), the draft tier and the identity plan
swapped in for this job only, and the pipeline given back as it was loaded, whatever happens.

The batched, FLOW and Finalize runners all run inside ``image_session``. Worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..characters.identity import IdentityPlan
from ..models.draft import DraftTier
from ..models.pipelines import LoadedModels, load_models

if TYPE_CHECKING:
    from .context import RunContext
    from .job import Job


def load_job_models(job: Job) -> LoadedModels:
    """The job's pipeline loaded from its model references, progress reported on the job."""

    def progress(phase: str, detail: dict[str, Any]) -> None:
        job.phase, job.detail = phase, detail

    return load_models(job.key, job.refs, job.lora, progress)


@contextmanager
def image_session(context: RunContext, job: Job) -> Iterator[tuple[LoadedModels, IdentityPlan | None]]:
    """The job's models and identity plan, released on the way out (the pipeline is shared between jobs)."""
    request = job.request
    job.status, job.phase, job.started = "running", "loading", time.time()
    # 1. Pipeline: reused when a previous job had the same model settings.
    t0 = time.perf_counter()
    models, job.pipeline_reused = context.pipelines.get(job.key, lambda: load_job_models(job))
    job.timings["load_s"] = time.perf_counter() - t0
    models.timings = job.timings  # where a compile warm-up is reported
    # 2. Draft tier: distillation LoRA, scheduler and tiny VAE swapped in for this job only.
    draft = DraftTier.enter(request, models, job) if request.tier == "draft" else None
    # 3. Identity conditioning, once per job: references encoded, LoRAs mixed, palette read.
    plan: IdentityPlan | None = None
    try:
        if request.characters or request.style_reference or request.palette_reference:
            plan = IdentityPlan(request, job.char_loras, job.ip_ref, keep_adapters=draft.adapters if draft else [])
            job.identity = plan.stats

            def progress(phase: str, detail: dict[str, Any]) -> None:
                job.phase, job.detail = phase, detail

            plan.prepare(models, context.storage, progress)
        yield models, plan
    finally:  # the pipeline goes back to how it was loaded, whatever happened
        if plan is not None:
            plan.release(models)
        if draft is not None:
            draft.release(models)
