"""One job's frames as a runner sees them: per-frame values, nets, pipeline settings, progress.

Shared by the batched, FLOW and Finalize runners. Worker thread.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from ..characters.inputs import FrameRegions, frame_regions
from ..contract.schedule import FrameValues, frame_nets, frame_values
from ..models.batch import BatchSettings
from ..models.pipelines import NET_ORDER
from ..models.prompt_blend import PromptEmbeddings

if TYPE_CHECKING:
    from ..characters.identity import IdentityPlan
    from ..contract.schema import FrameSpec
    from ..models.pipelines import LoadedModels
    from .context import RunContext
    from .job import Job


class Shot:
    """One job's frames as a run function sees them: per-frame values, nets, pipeline settings, progress."""

    def __init__(self, context: RunContext, job: Job, models: LoadedModels, plan: IdentityPlan | None) -> None:
        request = job.request
        self.context, self.job, self.models, self.plan = context, job, models, plan
        job.phase, job.detail = "generating", {}
        # Per-frame values (engine/contract/schedule.py); prompts encoded once per job when blended.
        self.values: dict[int, FrameValues] = {f.frame: frame_values(request, f) for f in request.frames}
        self.embeddings = PromptEmbeddings(models.base, request.negative_prompt, models.family)
        self.run_started = time.perf_counter()
        self.generated = 0
        self._visible: dict[int, tuple[int, ...]] = {}

    def settings(self, batch: list[FrameSpec]) -> BatchSettings:
        """The call's settings, from the batch's first frame (a batch shares its ``batch_group``)."""
        request = self.job.request
        first = self.values[batch[0].frame]
        return BatchSettings(
            prompt=first.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
            guidance_scale=first.guidance_scale, width=request.width, height=request.height,
            weights={kind: first.weight(kind) for kind in NET_ORDER},
            control_start=first.control_start, control_end=first.control_end,
            ranges={kind: first.control_range(kind) for kind in NET_ORDER},
            prompt_embeds=(self.embeddings.batch([self.values[f.frame] for f in batch])
                           if first.blend is not None else None),
        )

    def nets(self, frame: FrameSpec) -> tuple[str, ...]:
        """The nets ``frame`` runs with: the loaded ones whose map it carries (schedule.frame_nets)."""
        return frame_nets(frame, self.values[frame.frame], self.models.key.net_kinds())

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
        self.job.update_eta(self.run_started, self.generated, handed=[f.frame for f in frames])


def identity_batch(context: RunContext, job: Job, models: LoadedModels, plan: IdentityPlan | None,
                   batch: list[FrameSpec], settings: BatchSettings) -> tuple[dict[str, Any] | None, Any]:
    """Pipeline arguments and processor context of the identity conditioning for ``batch``."""
    if plan is None:
        return None, contextlib.nullcontext()
    regions: list[FrameRegions | None] = [frame_regions(context.storage, job.request, f.mask) for f in batch]
    extra, processors = plan.batch(models, regions, settings.prompt, settings.negative_prompt,
                                settings.guidance_scale)
    if settings.prompt_embeds is not None and "prompt_embeds" in extra:
        # Prompt travel under regional prompts: the blended shot prompt takes the shot block
        # (the first 77 tokens); the characters' blocks stay constant across frames.
        blended = settings.prompt_embeds["prompt_embeds"]
        embeds = extra["prompt_embeds"].clone()
        embeds[:, : blended.shape[1]] = blended.to(device=embeds.device, dtype=embeds.dtype)
        extra["prompt_embeds"] = embeds
        if "pooled_prompt_embeds" in extra:  # SDXL: the pooled embedding is the (blended) shot prompt's
            pooled = settings.prompt_embeds["pooled_prompt_embeds"]
            extra["pooled_prompt_embeds"] = pooled.to(device=embeds.device, dtype=embeds.dtype)
    return extra, processors
