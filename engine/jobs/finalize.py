"""Finalize Take: an approved take enlarged to delivery size, detailed, and kept coherent over time.

Per frame, in timeline order (a job whose ``finalize`` is set; engine/API.md):
1. **Enlarge** the approved frame (``frames[i].source``) to width x height: a
   super-resolution model (``finalize.upscaler``, read by spandrel from .safetensors) then
   Lanczos to the exact size, or Lanczos alone (engine/models/upscale.py).
2. **Detail pass**: img2img from the enlarged frame at ``finalize.detail_strength`` (low:
   0.3), guided by the control maps rendered at the new size. Only its high band is kept
   (frequencies finer than the approved frame's pixels, a low-pass of radius = the
   enlargement factor): the approved take decides what is in the frame, the pass adds detail.
3. **FLOW-guided**: the previous finished frame is warped along the flow into this one and
   pasted over the carried pixels with the sharp FLOW method (bicubic warp, detail split,
   engine/COHERENCE.md), so the added detail does not flicker; keyframes at the first frame,
   cuts and missing flow as in generation. No colour match: the approved frame sets colour.

Frames chain their cache keys like FLOW, so a cancelled finalize resumes after its last
finished frame. Runs on the worker thread; holds one frame pair at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..coherence.strategies import (
    FLOW_METHOD,
    Carried,
    ColorStats,
    FlowCoherence,
    FlowMethod,
    color_stats,
    high_band,
    low_pass,
)
from ..models.codecs import read_rgb
from ..models.refs import fingerprint
from ..models.upscale import check_upscaler_path, enlarge, load_upscaler
from .session import image_session
from .shot import Shot

if TYPE_CHECKING:
    from ..contract.schema import FrameSpec, JobRequest
    from ..models.batch import BatchSettings
    from ..models.pipelines import LoadedModels
    from .context import RunContext
    from .job import Job

logger = logging.getLogger(__name__)

class FinalizeRunner:
    """Finalize Take: the approved frames enlarged and detailed, in timeline order along the flow."""

    def run(self, context: RunContext, group: list[Job]) -> None:
        job = group[0]
        request = job.request
        with image_session(context, job) as (models, plan):
            shot = Shot(context, job, models, plan)
            todo = [f for f in request.frames if f.frame not in job.done]
            run_finalize(context, job, models, shot.settings(todo[:1] or request.frames[:1]), shot.nets,
                         shot.run_started)
        # Done only once the pipeline is back as loaded (draft tier and identity plan released).
        context.complete(job, shot.run_started)


# The sharp FLOW method without colour matching (the approved frame sets colour) and
# without latent blending (the detail pass starts from the enlarged approved frame).
FINALIZE_METHOD: FlowMethod = replace(FLOW_METHOD, color_match=False, keep_until=0.0)


def finalize_strategy(request: JobRequest) -> FlowCoherence:
    """Finalize always runs frame by frame along the flow, whatever ``coherence.mode`` says."""
    return FlowCoherence(request.coherence, FINALIZE_METHOD)


def cache_inputs(request: JobRequest, frame: FrameSpec) -> dict[str, Any]:
    """What a finalized frame depends on beyond the generation settings (part of its cache key)."""
    assert request.finalize is not None
    path = check_upscaler_path(request.finalize.upscaler)
    return {"source": frame.source, "detail_strength": request.finalize.detail_strength,
            "upscaler": f"{path}:{fingerprint(path)}" if path else None}


def run_finalize(context: RunContext, job: Job, models: LoadedModels, settings: BatchSettings,
                 active_nets: Callable[[FrameSpec], tuple[str, ...]], run_started: float) -> None:
    """Worker thread: the steps of the module docstring for every frame not already cached."""
    from PIL import Image

    from ..models.batch import run_img2img

    request = job.request
    spec = request.finalize
    assert spec is not None
    strategy = finalize_strategy(request)
    upscaler_path: Path | None = check_upscaler_path(spec.upscaler)
    upscaler = load_upscaler(upscaler_path, job.key.device) if upscaler_path else None
    ordered = strategy.order(request.frames)
    keyframes: list[int] = []
    job.detail = {"keyframes": keyframes, "upscaler": upscaler.name if upscaler else "Lanczos resize"}
    anchor: ColorStats | None = None
    previous: FrameSpec | None = None
    generated = 0
    for index, frame in enumerate(ordered):
        if job.cancel_event.is_set():
            break
        # 0. Done already (this job, the cache, or another job since submit).
        if frame.frame in job.done or context.take_from_cache(job, frame):
            previous = frame
            continue
        if index > 0 and anchor is None:
            anchor = color_stats(context.read_frame(job, ordered[0]))
        # 1. Enlarge the approved frame.
        big, radius = enlarged_source(context, job, frame, upscaler)
        # 2. Carry the previous finished frame along the flow (as FLOW generation does).
        reason = strategy.keyframe_reason(index, frame, previous)
        carried: Carried | None = None
        if reason is None:
            carried, reason = context.carry(job, strategy, frame, previous)
        if reason is not None:
            keyframes.append(frame.frame)
        # 3. Detail pass guided by the maps at the new size; 0 strength keeps the enlarged frame.
        detailed = big
        if spec.detail_strength > 0.0:
            nets = active_nets(frame)
            maps = {name: context.decode(name, getattr(frame, name), request) for name in nets}
            context.before_denoise(job, [frame])
            job.step = 0
            image, model_s = run_img2img(models, nets, maps, Image.fromarray(big), spec.detail_strength,
                                         request.seed, settings, job.on_step)
            job.timings["model_s"] += model_s
            if image is None:
                break
            band = high_band(np.asarray(image.convert("RGB")), radius)
            detailed = np.clip(np.rint(low_pass(big, radius) + band), 0, 255).astype(np.uint8)
        # 4. Paste the carried frame (sharp FLOW), then to the writer (the next frame reads it back).
        result = strategy.finish(detailed, carried, anchor if index > 0 else None)
        context.store_frame(job, frame.frame, result)
        previous = frame
        generated += 1
        job.update_eta(run_started, generated, handed=[frame.frame])


def enlarged_source(context: RunContext, job: Job, frame: FrameSpec, upscaler: Any) -> tuple[np.ndarray, int]:
    """The approved frame at the job's size, and the enlargement factor (the detail band's radius)."""
    request = job.request
    started = time.perf_counter()
    assert frame.source is not None
    # An approved take's frame, decoded within the new size's pixels (engine/images.py).
    source = read_rgb(context.storage.read_blob(frame.source), max_pixels=request.width * request.height,
                      what="finalize source")
    big = enlarge(source, request.width, request.height, upscaler)
    radius = max(1, round(request.width / source.shape[1]))
    job.timings["upscale_s"] = job.timings.get("upscale_s", 0.0) + time.perf_counter() - started
    return big, radius
