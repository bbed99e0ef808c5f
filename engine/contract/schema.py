"""Request and response models of the HTTP API (see engine/API.md).

Pydantic checks types and ranges; ``JobRequest.check_inputs`` adds the checks that
need more than one field. Every error names the JSON field and says what to send.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

logger = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_DEPTH = "lllyasviel/control_v11f1p_sd15_depth"
DEFAULT_POSE = "lllyasviel/control_v11p_sd15_openpose"
# Issue 23: the ControlNet 1.1 checkpoints of the exact maps the add-on renders beside depth and pose.
DEFAULT_NORMAL = "lllyasviel/control_v11p_sd15_normalbae"
DEFAULT_LINEART = "lllyasviel/control_v11p_sd15_lineart"
DEFAULT_SEG = "lllyasviel/control_v11p_sd15_seg"
# The line-art map's form (a per-shot setting in meta.json) picks the ControlNet trained on that form;
# the engine itself feeds the image as it is, whichever form it is.
LINEART_PRESETS: dict[str, str] = {
    "lineart": DEFAULT_LINEART,
    "canny": "lllyasviel/control_v11p_sd15_canny",
    "mlsd": "lllyasviel/control_v11p_sd15_mlsd",
}
# Every per-frame control map a ControlNet reads, in the order nets are stacked (models/pipelines.py NET_ORDER).
MAP_KINDS = ("depth", "pose", "normal", "lineart", "seg")
ControlKind = Literal["depth", "pose", "normal", "lineart", "seg"]
# A ControlNet's active share of the denoising steps: [start, end], each in 0..1 (start < end: check_ranges).
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
ControlRanges = dict[ControlKind, tuple[Fraction, Fraction]]
DEFAULT_VIDEO_MODEL = "Wan-AI/Wan2.1-VACE-1.3B-diffusers"
DEFAULT_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-3"


class _Strict(BaseModel):
    # Unknown keys are refused rather than ignored: a typo in a setting would
    # otherwise silently fall back to a default and the frames would look wrong.
    model_config = ConfigDict(extra="forbid")


def _check_sha(value: str | None) -> str | None:
    if value is not None and not SHA256_RE.match(value):
        raise ValueError("must be the lowercase hex sha256 of a blob uploaded with PUT /blobs/{sha256}")
    return value


class ModelSpec(_Strict):
    base: str = Field(DEFAULT_BASE, min_length=1)
    controlnet_depth: str | None = DEFAULT_DEPTH
    controlnet_pose: str | None = DEFAULT_POSE
    # Loaded only when some frame of the job carries that map (a depth+pose job never loads them).
    controlnet_normal: str | None = DEFAULT_NORMAL
    controlnet_lineart: str | None = DEFAULT_LINEART
    controlnet_seg: str | None = DEFAULT_SEG
    lora: str | None = None
    lora_scale: float = Field(1.0, ge=0.0, le=4.0)
    # Issue 9 (engine/IDENTITY.md): an IP-Adapter (.safetensors file, or "<owner>/<repo>/<path>.safetensors"
    # on the Hub) and its CLIP vision image encoder (folder, or "<owner>/<repo>[/<subfolder>]").
    ip_adapter: str | None = None
    image_encoder: str | None = None
    # Issue 24 (engine/models/families.py): the base model's family; "sd15" keeps every older request as it was.
    family: Literal["sd15", "sdxl", "flux"] = "sd15"
    # A union ControlNet (SDXL: ControlNetUnionModel, Flux: a FluxControlNetModel with modes): when set it serves
    # every map the frames carry, each in its control mode, and the per-map nets above are not used.
    controlnet_union: str | None = None
    # A diffusers folder whose configs and tokenizers build a single-file base (its weights are not read);
    # None: the family's reference repository in the Hugging Face cache. Never downloaded at load.
    base_config: str | None = None


class FrameSpec(_Strict):
    frame: int
    depth: str | None = None
    pose: str | None = None
    # Issue 23 (API.md "Normal, line-art and segmentation maps"): RGB normals, grey line art, grey ADE20K ids.
    normal: str | None = None
    lineart: str | None = None
    seg: str | None = None
    flow: str | None = None
    # Per-frame values (animated in Blender); None = the job's value (engine/contract/schedule.py).
    prompt_weights: list[float] | None = None
    depth_weight: float | None = Field(None, ge=0.0, le=2.0)
    pose_weight: float | None = Field(None, ge=0.0, le=2.0)
    normal_weight: float | None = Field(None, ge=0.0, le=2.0)
    lineart_weight: float | None = Field(None, ge=0.0, le=2.0)
    seg_weight: float | None = Field(None, ge=0.0, le=2.0)
    # Per-map [start, end] of this frame; a kind missing here takes the job's (schedule.control_range).
    control_ranges: ControlRanges | None = None
    control_start: float | None = Field(None, ge=0.0, le=1.0)
    control_end: float | None = Field(None, ge=0.0, le=1.0)
    guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
    strength: float | None = Field(None, ge=0.05, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    # uint16 id mask of the frame (conditioning masks/NNNN.png): which character owns each pixel.
    mask: str | None = None
    # Finalize Take only: the approved take's frame (PNG blob) to enlarge and detail.
    source: str | None = None

    _sha = field_validator("depth", "pose", "normal", "lineart", "seg", "flow", "mask", "source")(_check_sha)

    @field_validator("prompt_weights")
    @classmethod
    def _weights_not_negative(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(not 0.0 <= w <= 1000.0 for w in value):
            raise ValueError(f"prompt weights must be between 0 and 1000, got {value}")
        return value


# At most this many characters per shot (and so per frame): each adds a 77-token block to
# every cross-attention and an IP-Adapter slot; engine/IDENTITY.md.
MAX_CHARACTERS = 4


class CharacterSpec(_Strict):
    """One character of the bible that is visible somewhere in the shot (engine/IDENTITY.md)."""

    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    mask_ids: list[int] = Field(default_factory=list)
    references: list[str] = Field(default_factory=list, max_length=16)
    identity_strength: float = Field(0.6, ge=0.0, le=2.0)
    lora: str | None = None
    lora_scale: float = Field(1.0, ge=0.0, le=4.0)
    trigger_words: str = ""

    @field_validator("references")
    @classmethod
    def _reference_shas(cls, value: list[str]) -> list[str]:
        for sha in value:
            _check_sha(sha)
        return value

    @field_validator("mask_ids")
    @classmethod
    def _ids_in_range(cls, value: list[int]) -> list[int]:
        for number in value:
            if not 0 < number < 65536:
                raise ValueError(f"mask ids are 1..65535 (0 is the background in the uint16 mask), got {number}")
        return value

    def region_prompt(self) -> str:
        """The text that conditions this character's region: description and LoRA trigger words."""
        return ", ".join(p.strip() for p in (self.description, self.trigger_words) if p.strip())


class FinalizeSpec(_Strict):
    """Finalize Take (engine/jobs/finalize.py): enlarge each frame's ``source`` to width x height, then detail it.

    ``upscaler``: a .safetensors super-resolution model on the engine machine (spandrel reads
    Real-ESRGAN, SwinIR, HAT, ...), or None for plain Lanczos resizing. ``detail_strength``:
    img2img strength of the detail pass guided by the control maps at the new size; 0 skips it.
    """

    upscaler: str | None = None
    detail_strength: float = Field(0.3, ge=0.0, le=1.0)


class DraftSpec(_Strict):
    """The draft tier (engine/models/draft.py, API.md "Draft tier"): a few-step distilled path, ControlNets kept.

    ``lora``: the distillation LoRA (LCM-LoRA or TCD LoRA): a local .safetensors file, or a Hub id
    ``<owner>/<repo>`` (its ``pytorch_lora_weights.safetensors``) or ``<owner>/<repo>/<path>.safetensors``;
    None picks the one made for the base model's family and ``scheduler``. ``steps`` and
    ``guidance_scale`` replace the job's. ``tiny_vae``: decode with a tiny VAE (diffusers
    AutoencoderTiny, safetensors); ``tiny_vae_model`` None picks madebyollin/taesd or taesdxl.
    Half-size drafts are the client's choice of width/height (maps rendered at that size).
    """

    lora: str | None = None
    lora_scale: float = Field(1.0, ge=0.0, le=4.0)
    scheduler: Literal["LCM", "TCD"] = "LCM"
    steps: int = Field(4, ge=1, le=50)
    guidance_scale: float = Field(1.0, ge=0.0, le=50.0)
    tiny_vae: bool = False
    tiny_vae_model: str | None = None


class CoherenceSpec(_Strict):
    """How the frames of a shot relate (engine/coherence/strategies.py, engine/COHERENCE.md).

    INDEPENDENT: every frame on its own with the shot seed. FLOW: each frame starts from
    the previous generated frame warped along the exact flow (img2img at ``strength``),
    with fresh keyframes at the first frame, every ``keyframe_interval`` frames (0: never
    on a schedule), at cuts and where flow is missing.
    """

    mode: Literal["INDEPENDENT", "FLOW"] = "INDEPENDENT"
    strength: float = Field(0.55, ge=0.05, le=1.0)
    keyframe_interval: int = Field(0, ge=0, le=100000)
    # near/far of the shot's depth maps (conditioning/meta.json): makes the disocclusion
    # check compare true relative depth; without them it is conservative (marks more).
    depth_range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def check_inputs(self) -> CoherenceSpec:
        if self.depth_range is not None and not 0.0 < self.depth_range[0] <= self.depth_range[1]:
            raise ValueError(f"depth_range must be [near, far] with 0 < near <= far (meta.json), got "
                             f"{list(self.depth_range)}")
        return self

    def cache_dump(self) -> dict[str, object]:
        """What the frames depend on: INDEPENDENT ignores the FLOW settings."""
        if self.mode == "INDEPENDENT":
            return {"mode": "INDEPENDENT"}
        return self.model_dump()


class VideoSpec(_Strict):
    """How a VIDEO job runs (engine/models/video.py, API.md "Video jobs").

    ``WAN_VACE``: ``model`` is a Wan VACE diffusers pipeline (1.3B, 14B, Wan 2.2 VACE).
    ``ANIMATEDIFF``: ``models.base`` (SD 1.5) with its depth/pose ControlNets plus the
    ``motion_adapter``. Shots longer than ``window`` frames run in windows that overlap by
    ``overlap`` frames (engine/models/windows.py); ``references`` are uploaded image blobs (the
    character bible's, or the shot's reference image).
    """

    pipeline: Literal["WAN_VACE", "ANIMATEDIFF"] = "WAN_VACE"
    model: str = Field(DEFAULT_VIDEO_MODEL, min_length=1)
    motion_adapter: str = Field(DEFAULT_MOTION_ADAPTER, min_length=1)
    control: Literal["DEPTH", "POSE", "DEPTH_POSE"] = "DEPTH"
    conditioning_scale: float = Field(1.0, ge=0.0, le=2.0)
    window: int = Field(81, ge=1, le=1025)
    overlap: int = Field(8, ge=0, le=1024)
    blend_frames: int = Field(4, ge=0, le=64)
    flow_shift: float | None = Field(None, gt=0.0, le=20.0)
    references: list[str] = Field(default_factory=list, max_length=8)

    @field_validator("references")
    @classmethod
    def _shas(cls, value: list[str]) -> list[str]:
        for sha in value:
            _check_sha(sha)
        return value


class JobRequest(_Strict):
    shot: str = ""
    models: ModelSpec = Field(default_factory=ModelSpec)
    prompt: str = ""
    style_prompt: str = ""
    negative_prompt: str = ""
    seed: int = Field(0, ge=0, le=2**63 - 1)
    steps: int = Field(20, ge=1, le=200)
    guidance_scale: float = Field(7.5, ge=0.0, le=50.0)
    width: int = Field(512, ge=64, le=4096)
    height: int = Field(512, ge=64, le=4096)
    batch_size: int = Field(1, ge=1, le=64)
    depth_weight: float = Field(1.0, ge=0.0, le=2.0)
    pose_weight: float = Field(1.0, ge=0.0, le=2.0)
    normal_weight: float = Field(1.0, ge=0.0, le=2.0)
    lineart_weight: float = Field(1.0, ge=0.0, le=2.0)
    seg_weight: float = Field(1.0, ge=0.0, le=2.0)
    control_start: float = Field(0.0, ge=0.0, le=1.0)
    control_end: float = Field(1.0, ge=0.0, le=1.0)
    # Per-map [start, end]; a kind missing here uses control_start/control_end.
    control_ranges: ControlRanges = Field(default_factory=dict)
    coherence: CoherenceSpec = Field(default_factory=CoherenceSpec)
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    attention_slicing: bool = False
    cpu_offload: bool = False
    # Issue 9: characters visible in this shot, the film's style and palette references.
    characters: list[CharacterSpec] = Field(default_factory=list)
    style_reference: str | None = None
    style_strength: float = Field(0.5, ge=0.0, le=2.0)
    palette_reference: str | None = None
    frames: list[FrameSpec] = Field(min_length=1)
    # IMAGE: per-frame image model (coherence applies). VIDEO: a video model (``video``).
    generator: Literal["IMAGE", "VIDEO"] = "IMAGE"
    video: VideoSpec = Field(default_factory=VideoSpec)
    # Prompt travel: frames blend these prompts' text embeddings by their prompt_weights.
    prompt_keys: list[str] = Field(default_factory=list, max_length=64)

    _ref_sha = field_validator("style_reference", "palette_reference")(_check_sha)
    # Finalize Take: set to enlarge and detail an approved take (every frame has a ``source``).
    finalize: FinalizeSpec | None = None
    # Generation tier (issue 15): "final" is the full path; "draft" the few-step distilled one (``draft``).
    tier: Literal["draft", "final"] = "final"
    draft: DraftSpec = Field(default_factory=DraftSpec)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE works on 8x8 blocks), got {value}")
        return value

    @model_validator(mode="after")
    def check_inputs(self) -> JobRequest:
        if self.control_start >= self.control_end:
            raise ValueError(
                f"control_start: {self.control_start} must be smaller than control_end ({self.control_end})"
            )
        check_ranges(self.control_ranges, "control_ranges")
        seen: set[int] = set()
        for i, frame in enumerate(self.frames):
            if frame.frame in seen:
                raise ValueError(f"frames[{i}].frame: frame {frame.frame} appears twice in frames; send each "
                                 "frame once")
            seen.add(frame.frame)
        check_frame_values(self)  # per-frame values (resolved in engine/contract/schedule.py)
        return self

    @model_validator(mode="after")
    def check_finalize(self) -> JobRequest:
        if self.finalize is None:
            return self
        for i, frame in enumerate(self.frames):
            if frame.source is None:
                raise ValueError(f"frames[{i}].source: a finalize job needs the approved frame {frame.frame} "
                                 "(upload its PNG with PUT /blobs/{sha256})")
        return self

    @model_validator(mode="after")
    def check_tier(self) -> JobRequest:
        if self.tier == "draft" and self.generator != "IMAGE":
            raise ValueError("tier: the draft tier runs the IMAGE generator only; send tier 'final' for VIDEO jobs")
        if self.tier == "draft" and self.finalize is not None:
            raise ValueError("tier: Finalize Take makes final frames; send tier 'final' with finalize")
        return self

    def map_kinds(self) -> tuple[str, ...]:
        """The control maps the job reads per frame: FLOW reads the flow maps too (INDEPENDENT accepts
        and ignores them)."""
        return (*MAP_KINDS, "flow") if self.coherence.mode == "FLOW" else MAP_KINDS

    def job_kind(self) -> Literal["video", "finalize", "flow", "batch"]:
        """Which runner makes this job's frames (engine/jobs/runners.py): a VIDEO job, Finalize Take,
        FLOW frames one from the other, or INDEPENDENT frames in batches."""
        if self.generator == "VIDEO":
            return "video"
        if self.finalize is not None:
            return "finalize"
        return "flow" if self.coherence.mode == "FLOW" else "batch"

    def full_prompt(self) -> str:
        """The prompt the model sees: the shot prompt followed by the style prompt."""
        return ", ".join(p.strip() for p in (self.prompt, self.style_prompt) if p.strip())


    def keyed_prompt(self, text: str) -> str:
        """A prompt key as the model sees it: the key's text followed by the constant style prompt.

        The constant parts (style now; the character descriptions once they exist) are
        appended to every key, so they stay the same across a prompt travel.
        """
        return ", ".join(p.strip() for p in (text, self.style_prompt) if p.strip())


def field_path(loc: tuple[int | str, ...]) -> str:
    """Turn a pydantic location ('body', 'frames', 3, 'depth') into 'frames[3].depth'."""
    out = ""
    for part in loc:
        if (part == "body" and not out) or part == "[key]":  # "[key]": pydantic's mark of a bad dict key
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def check_frame_values(request: JobRequest) -> None:
    """``check_inputs`` for the per-frame fields; raises ValueError naming the field."""
    keys = len(request.prompt_keys)
    for i, frame in enumerate(request.frames):
        if frame.prompt_weights is not None:
            if not keys:
                raise ValueError(f"frames[{i}].prompt_weights is set but prompt_keys is empty: send the prompts "
                                 "the weights refer to in prompt_keys")
            if len(frame.prompt_weights) != keys:
                raise ValueError(f"frames[{i}].prompt_weights has {len(frame.prompt_weights)} weights but "
                                 f"prompt_keys has {keys} prompts: send one weight per prompt key")
        if frame.control_ranges:
            check_ranges(frame.control_ranges, f"frames[{i}].control_ranges")
        start = request.control_start if frame.control_start is None else frame.control_start
        end = request.control_end if frame.control_end is None else frame.control_end
        if (frame.control_start is not None or frame.control_end is not None) and start >= end:
            raise ValueError(f"frames[{i}].control_start ({start}) must be smaller than control_end ({end}) "
                             f"on frame {frame.frame}")


def check_ranges(ranges: dict[str, tuple[float, float]], field: str) -> None:
    """Each map's start below its end (pydantic checked each is in 0..1); ValueError naming the map's field."""
    for kind, (start, end) in ranges.items():
        if start >= end:
            raise ValueError(f"{field}.{kind}: start {start} must be smaller than end {end} (the share of the "
                             "denoising steps the map's ControlNet acts on)")
