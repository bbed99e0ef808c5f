"""The engine job request as a typed value: the add-on's side of the contract in engine/contract/schema.py.

Blender's Python has no pydantic, so these are plain dataclasses that mirror the
engine's ``JobRequest`` field for field (tests/blender/test_request_contract.py
validates what `collect_shot` builds with the engine's own model, for every kind of
shot). A field left at ``None`` where the engine has a default of its own is not sent
(``_OMIT``): the engine's default applies, and the JSON stays what it was before the
request was typed. Building a spec from a dict with an unknown key raises TypeError, as
the engine would refuse the key.

The model defaults below are the add-on's one copy (the properties' defaults use them);
tests/unit/test_request.py checks they equal the engine schema's.

Plain Python; runs on any thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# --- Model defaults: the scene properties start from these; the engine's schema has the same ones
# for what it defaults (not the IP-Adapter, which it only loads when a request names one). ---------
DEFAULT_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_CONTROLNET_DEPTH = "lllyasviel/control_v11f1p_sd15_depth"
DEFAULT_CONTROLNET_POSE = "lllyasviel/control_v11p_sd15_openpose"
DEFAULT_CONTROLNET_NORMAL = "lllyasviel/control_v11p_sd15_normalbae"
DEFAULT_CONTROLNET_LINEART = "lllyasviel/control_v11p_sd15_lineart"
DEFAULT_CONTROLNET_SEG = "lllyasviel/control_v11p_sd15_seg"
# The line-art ControlNet follows the shot's line-art form (engine/contract/schema.py LINEART_PRESETS).
LINEART_PRESETS = {
    "lineart": DEFAULT_CONTROLNET_LINEART,
    "canny": "lllyasviel/control_v11p_sd15_canny",
    "mlsd": "lllyasviel/control_v11p_sd15_mlsd",
}
# The control maps a frame can carry, in the engine's order (engine NET_ORDER).
MAP_KINDS = ("depth", "pose", "normal", "lineart", "seg")
DEFAULT_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-3"
DEFAULT_VIDEO_MODEL = "Wan-AI/Wan2.1-VACE-1.3B-diffusers"
DEFAULT_IP_ADAPTER = "h94/IP-Adapter/models/ip-adapter-plus_sd15.safetensors"
DEFAULT_IMAGE_ENCODER = "h94/IP-Adapter/models/image_encoder"

_OMIT = {"omit_none": True}  # field metadata: not sent while None (the engine's default applies)


def _plain(value: Any) -> Any:
    if isinstance(value, _Spec):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _Spec:
    def to_dict(self) -> dict[str, Any]:
        """The JSON object the engine gets, in field order; ``_OMIT`` fields only when set."""
        out: dict[str, Any] = {}
        for spec in fields(self):  # type: ignore[arg-type]
            value = getattr(self, spec.name)
            if value is None and spec.metadata.get("omit_none"):
                continue
            out[spec.name] = _plain(value)
        return out


@dataclass
class ModelSpec(_Spec):
    base: str = DEFAULT_BASE
    controlnet_depth: str | None = DEFAULT_CONTROLNET_DEPTH  # None is sent: no depth ControlNet
    controlnet_pose: str | None = DEFAULT_CONTROLNET_POSE
    # Sent only with the map (a shot without normal, line-art or seg maps sends none of these).
    controlnet_normal: str | None = field(default=None, metadata=_OMIT)
    controlnet_lineart: str | None = field(default=None, metadata=_OMIT)
    controlnet_seg: str | None = field(default=None, metadata=_OMIT)
    lora: str | None = None
    lora_scale: float = 1.0
    ip_adapter: str | None = field(default=None, metadata=_OMIT)
    image_encoder: str | None = field(default=None, metadata=_OMIT)
    # Issue 24 (core/jobs/families.py): sent only off SD 1.5, so SD 1.5 requests and takes stay as they were.
    family: str | None = field(default=None, metadata=_OMIT)  # "sdxl" | "flux"
    controlnet_union: str | None = field(default=None, metadata=_OMIT)
    base_config: str | None = field(default=None, metadata=_OMIT)


@dataclass
class CoherenceSpec(_Spec):
    mode: str = "INDEPENDENT"  # "INDEPENDENT" or "FLOW"
    strength: float | None = field(default=None, metadata=_OMIT)
    keyframe_interval: int | None = field(default=None, metadata=_OMIT)
    depth_range: list[float] | None = field(default=None, metadata=_OMIT)  # [near, far] of meta.json


@dataclass
class CharacterSpec(_Spec):
    name: str
    description: str = ""
    mask_ids: list[int] = field(default_factory=list)
    references: list[str] = field(default_factory=list)  # sha256 of uploaded images
    identity_strength: float = 0.6
    lora: str | None = None
    lora_scale: float = 1.0
    trigger_words: str = ""


@dataclass
class VideoSpec(_Spec):
    pipeline: str = "WAN_VACE"  # "WAN_VACE" or "ANIMATEDIFF"
    control: str = "DEPTH"
    conditioning_scale: float = 1.0
    window: int = 81
    overlap: int = 8
    model: str | None = field(default=None, metadata=_OMIT)  # WAN_VACE
    motion_adapter: str | None = field(default=None, metadata=_OMIT)  # ANIMATEDIFF
    references: list[str] | None = field(default=None, metadata=_OMIT)


@dataclass
class FinalizeSpec(_Spec):
    upscaler: str | None = None
    detail_strength: float = 0.3


@dataclass
class DraftSpec(_Spec):
    """The draft tier's options (engine/schema.DraftSpec); sent only with ``tier="draft"``."""

    lora: str | None = None
    lora_scale: float = 1.0
    scheduler: str = "LCM"
    steps: int = 4
    guidance_scale: float = 1.0
    tiny_vae: bool = False
    tiny_vae_model: str | None = None


@dataclass
class JobRequest(_Spec):
    """Everything of the engine's JobRequest but ``frames``, which `run_shot` adds once the maps are uploaded."""

    shot: str
    models: ModelSpec
    prompt: str = ""
    style_prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance_scale: float = 7.5
    width: int = 512
    height: int = 512
    depth_weight: float = 1.0
    pose_weight: float = 1.0
    # Sent only with their maps, so depth + pose requests stay what they were.
    normal_weight: float | None = field(default=None, metadata=_OMIT)
    lineart_weight: float | None = field(default=None, metadata=_OMIT)
    seg_weight: float | None = field(default=None, metadata=_OMIT)
    control_start: float = 0.0
    control_end: float = 1.0
    # Per-map [start, end] where a map has its own range ({} is not sent: every map uses control_start/end).
    control_ranges: dict[str, list[float]] | None = field(default=None, metadata=_OMIT)
    coherence: CoherenceSpec = field(default_factory=CoherenceSpec)
    generator: str | None = field(default=None, metadata=_OMIT)  # "VIDEO"; not sent for IMAGE
    video: VideoSpec | None = field(default=None, metadata=_OMIT)
    characters: list[CharacterSpec] | None = field(default=None, metadata=_OMIT)
    style_reference: str | None = field(default=None, metadata=_OMIT)
    style_strength: float | None = field(default=None, metadata=_OMIT)
    palette_reference: str | None = field(default=None, metadata=_OMIT)
    finalize: FinalizeSpec | None = field(default=None, metadata=_OMIT)
    batch_size: int = 1
    device: str = "auto"
    attention_slicing: bool = False
    cpu_offload: bool = False
    prompt_keys: list[str] | None = field(default=None, metadata=_OMIT)
    tier: str | None = field(default=None, metadata=_OMIT)  # "draft"; not sent for final takes
    draft: DraftSpec | None = field(default=None, metadata=_OMIT)

    @classmethod
    def from_parts(cls, shot: str, models: dict[str, Any], prompts: dict[str, Any], settings: dict[str, Any],
                   **rest: Any) -> JobRequest:
        """The request from a take's identity parts (take.json's models, prompts and settings).

        ``settings`` keys that are no request fields (``per_frame``, ``source_take``, ``tier``)
        stay out; any other unknown key raises TypeError.
        """
        values = {k: v for k, v in {**prompts, **settings}.items() if k not in _TAKE_ONLY}
        values.update(rest)
        values["models"] = ModelSpec(**models)
        values["coherence"] = CoherenceSpec(**values.get("coherence", {}))
        if values.get("video") is not None:
            values["video"] = VideoSpec(**values["video"])
        if values.get("characters") is not None:
            values["characters"] = [CharacterSpec(**c) for c in values["characters"]]
        if values.get("finalize") is not None:
            values["finalize"] = FinalizeSpec(**values["finalize"])
        if values.get("draft") is not None:
            values["draft"] = DraftSpec(**values["draft"])
        return cls(shot=shot, **values)

    def body(self, frames: list[dict[str, Any]]) -> dict[str, Any]:
        """The POST /jobs body: this request with its ``frames``."""
        return {**self.to_dict(), "frames": frames}


# take.json settings that describe the take, not the engine job.
_TAKE_ONLY = {"per_frame", "source_take", "tier"}


def frame_entries(frames: list[int], maps: dict[int, dict[str, Path | None]], hashes: dict[Path, str],
                  frame_values: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's ``frames``: per frame its control maps by sha256 and its animated values."""
    return [
        {"frame": frame, **{k: (hashes[p] if p is not None else None) for k, p in maps[frame].items()},
         **frame_values.get(frame, {})}
        for frame in frames
    ]
