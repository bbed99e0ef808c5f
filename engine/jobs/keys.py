"""Cache keys: the content hash of everything that decides a frame's pixels, and nothing else.

Computed at submit (HTTP thread); a frame whose key is in the frame cache is never made again,
by this job or any other. FLOW and Finalize chain each frame's key to the previous one's.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from .. import ALGORITHM_VERSION
from ..coherence.strategies import CoherenceStrategy
from ..contract.schedule import EXTRA_MAPS, frame_nets, frame_values
from ..contract.schema import FrameSpec, JobRequest
from ..models.draft import cache_inputs as draft_inputs
from ..models.pipelines import PipelineKey
from ..storage import canonical_hash
from .finalize import cache_inputs as finalize_inputs


@functools.lru_cache(maxsize=1024)
def text_digest(text: str) -> str:
    """A prompt's digest for cache keys: a long prompt shared by many frames is hashed once."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def frame_key(request: JobRequest, key: PipelineKey, strategy: CoherenceStrategy, frame: FrameSpec,
              previous_key: str | None = None, identity: dict[str, Any] | None = None,
              shared: str | None = None) -> str:
    """Content hash of everything that decides a frame's pixels, and nothing else.

    Batch size, slicing and offload only change speed and memory, so they are left
    out: a repeat with another batch size is still a cache hit. ``shared`` is
    ``request_digest`` computed once for the job; a prompt's text enters by its digest,
    computed once per distinct text (a long prompt is not hashed once per frame).
    Per-frame values (engine/contract/schedule.py) replace the job's under the same names.
    A normal, line-art or segmentation map enters only on a frame that runs with it, with its net's
    identity: a frame without one keys as it did before issue 23, whatever else the job carries.
    ``identity`` (characters.identity_cache_inputs) and the frame's mask enter only
    when the job has characters or film references, so other jobs keep their keys.
    """
    values = frame_values(request, frame)
    kinds = key.net_kinds()
    nets = frame_nets(frame, values, kinds)
    own = values.cache_inputs(nets)
    if isinstance(own["prompt"], str):
        own["prompt"] = text_digest(own["prompt"])
    coherence = request.coherence.cache_dump()
    if "strength" in coherence:
        coherence["strength"] = values.strength
    extra: dict[str, Any] = {}
    if identity:
        extra = {"identity": identity, "mask": frame.mask if request.characters else None}
    return canonical_hash({
        "request": shared or request_digest(request, key),
        **own,
        "coherence": coherence,
        "depth": frame.depth if "depth" in kinds else None, "pose": frame.pose if "pose" in kinds else None,
        **{kind: {"map": getattr(frame, kind), "model": key.net_identity(kind)} for kind in EXTRA_MAPS if kind in nets},
        **strategy.cache_inputs(frame, previous_key),
        **extra,
        **({"finalize": finalize_inputs(request, frame)} if request.finalize is not None else {}),
    })

def request_digest(request: JobRequest, key: PipelineKey) -> str:
    """Hash of the job-wide part of every frame key (what no frame can change)."""
    models: dict[str, Any] = {"base": key.base, "depth": key.depth, "pose": key.pose, "lora": key.lora,
                              "lora_scale": key.lora_scale}
    # Issue 24: only another family, or a union net, adds to the models: SD 1.5 jobs keep their keys.
    if key.family != "sd15":
        models["family"] = key.family
    if key.union is not None:
        models["union"] = key.union
    return canonical_hash({
        "algorithm": ALGORITHM_VERSION,
        "models": models,
        "device": key.device, "dtype": key.dtype,
        "negative_prompt": text_digest(request.negative_prompt), "steps": request.steps,
        "width": request.width, "height": request.height,
        # Draft frames only: final jobs keep the keys they always had.
        **({"draft": draft_inputs(request)} if request.tier == "draft" else {}),
    })
