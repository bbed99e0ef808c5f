"""Submit an image job (batched, FLOW or Finalize): checked against the engine's state, its models
resolved and its frames keyed, on the HTTP thread, so every mistake is a 4xx naming the field
before anything is queued. VIDEO jobs have their own (engine/jobs/video.py ``submit_video``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from ..characters.inputs import check_characters, identity_cache_inputs
from ..characters.ip_adapter import IpAdapterRef, resolve_ip_adapter
from ..coherence.strategies import CoherenceStrategy, make_strategy
from ..contract.errors import BadRequest
from ..contract.schedule import job_extra_maps, job_warnings
from ..contract.schema import MAP_KINDS, JobRequest
from ..models.checks import check_family
from ..models.draft import check_draft, draft_request
from ..models.loaders import single_file_config, union_file_config
from ..models.pipelines import PipelineKey, SpeedOptions
from ..models.refs import ModelRef, resolve_ref
from ..models.upscale import check_upscaler_path
from ..storage import Storage
from .finalize import finalize_strategy
from .job import Job
from .keys import frame_key, request_digest

logger = logging.getLogger(__name__)


def submit_image(request: JobRequest, storage: Storage, resolve_device: Callable[[str], str],
                 speed: SpeedOptions, job_class: type[Job] = Job) -> Job:
    """A checked, keyed job for ``request`` (not yet queued). HTTP thread."""
    # 0. Draft tier (engine/models/draft.py): its references checked, its steps and guidance in the request.
    check_draft(request)
    request = draft_request(request)
    # 1. Models: resolved now so a wrong path is a 400 naming the field.
    refs, lora = resolve_models(request)
    # 2. Control maps must have been uploaded.
    check_blobs(request, storage)
    # 2b. Characters, references, masks and the film look (engine/characters/inputs.py).
    char_loras = check_characters(request, storage)
    ip_ref = identity_adapter(request)
    # 2c. Every model of the family, every feature and map one the family has (engine/models/checks.py),
    #     told from configs and file headers before anything is loaded; a single file's config found.
    check_family(request, refs, lora, char_loras, ip_ref.weights if ip_ref else None)
    refs["base"] = single_file_config(refs["base"], request.models)  # type: ignore[arg-type]
    identity = identity_cache_inputs(request, char_loras, ip_ref.identity() if ip_ref else None)
    # 2d. Where it runs and how its frames are linked.
    try:
        device = resolve_device(request.device)
    except ValueError as exc:
        raise BadRequest(str(exc), field="device") from exc
    strategy = job_strategy(request)
    key = pipeline_key(request, refs, lora, device, speed)
    # 3. Cache keys, chained in generation order for FLOW: frames already made by any
    #    earlier job are done before queuing.
    frame_keys = chained_keys(request, key, strategy, identity)
    job = job_class(id=uuid.uuid4().hex[:16], request=request, refs=refs, lora=lora, key=key,
                    frame_keys=frame_keys, warnings=job_warnings(request), char_loras=char_loras, ip_ref=ip_ref)
    for warning in job.warnings:
        logger.warning("Job %s (%s): %s", job.id, request.shot, warning)
    return job


def resolve_models(request: JobRequest) -> tuple[dict[str, ModelRef | None], ModelRef | None]:
    """The base model and ControlNets by role, and the LoRA; 400 naming the field for a wrong one.

    Depth and pose are resolved as they always were; the normal, line-art and segmentation nets only
    when some frame runs with that map (``job_extra_maps``), so their default Hub ids are never looked
    up, let alone loaded, for a job that sends no such map. A union ControlNet (issue 24) serves every
    map: then the per-map nets are not resolved at all.
    """
    spec = request.models
    refs: dict[str, ModelRef | None] = {"base": resolve_ref(spec.base, "models.base", "base")}
    if spec.controlnet_union:
        refs["union"] = resolve_ref(spec.controlnet_union, "models.controlnet_union", "controlnet")
        union_file_config(refs["union"])
        lora = resolve_ref(spec.lora, "models.lora", "lora") if spec.lora else None
        return refs, lora
    for kind in ("depth", "pose", *job_extra_maps(request)):
        value = getattr(spec, f"controlnet_{kind}")
        refs[kind] = resolve_ref(value, f"models.controlnet_{kind}", "controlnet") if value else None
    lora = resolve_ref(spec.lora, "models.lora", "lora") if spec.lora else None
    return refs, lora


def check_blobs(request: JobRequest, storage: Storage) -> None:
    """Every map the job reads is on the engine (``JobRequest.map_kinds``); Finalize Take
    (engine/jobs/finalize.py) reads the flow and the approved frames too."""
    names = (*MAP_KINDS, "flow", "source") if request.finalize is not None else request.map_kinds()
    for i, frame in enumerate(request.frames):
        for name in names:
            sha = getattr(frame, name)
            if sha is not None and not storage.has_blob(sha):
                raise BadRequest(
                    f"frames[{i}].{name}: blob {sha} is not on the engine; upload it first with "
                    f"PUT /blobs/{sha}", field=f"frames[{i}].{name}", code="missing_blob",
                )


def identity_adapter(request: JobRequest) -> IpAdapterRef | None:
    """The IP-Adapter, when the job has references for it (characters' or the style reference)."""
    spec = request.models
    if spec.ip_adapter and (request.style_reference or any(c.references for c in request.characters)):
        return resolve_ip_adapter(spec.ip_adapter, spec.image_encoder)
    return None


def job_strategy(request: JobRequest) -> CoherenceStrategy:
    """How the job's frames are ordered and linked: its coherence mode, or Finalize's own."""
    try:
        strategy = make_strategy(request.coherence) if request.finalize is None else finalize_strategy(request)
    except ValueError as exc:
        raise BadRequest(str(exc), field="coherence.mode") from exc
    if request.finalize is not None:
        check_upscaler_path(request.finalize.upscaler)
    return strategy


def pipeline_key(request: JobRequest, refs: dict[str, ModelRef | None], lora: ModelRef | None, device: str,
                 speed: SpeedOptions) -> PipelineKey:
    """What the loaded pipeline is (jobs with equal keys share it)."""
    spec = request.models
    base = refs["base"]
    assert base is not None
    offload = request.cpu_offload and device == "cuda"
    nets = {kind: ref.identity() if (ref := refs.get(kind)) is not None else None for kind in MAP_KINDS}
    union = refs.get("union")
    return PipelineKey(
        base=base.identity(), **nets,
        lora=lora.identity() if lora else None, lora_scale=spec.lora_scale if lora else 0.0,
        device=device, attention_slicing=request.attention_slicing, cpu_offload=offload,
        **speed.key_fields(device, offload), family=spec.family, union=union.identity() if union else None,
    )


def chained_keys(request: JobRequest, key: PipelineKey, strategy: CoherenceStrategy,
                 identity: dict[str, Any] | None) -> dict[int, str]:
    """Every frame's cache key, in generation order (chained for FLOW and Finalize)."""
    frame_keys: dict[int, str] = {}
    previous_key: str | None = None
    shared = request_digest(request, key)  # prompts etc. hashed once per job, not per frame
    for f in strategy.order(request.frames):
        frame_keys[f.frame] = previous_key = frame_key(request, key, strategy, f, previous_key, identity, shared)
    return frame_keys
