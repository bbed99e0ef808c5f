"""Video-model pipelines: Wan VACE (``WanVACEPipeline``) and AnimateDiff ControlNet (SD 1.5).

A loaded video model runs one *window* of a shot at a time (engine/models/windows.py plans
them, engine/jobs/video.py chains them). Per window it gets the control video (depth,
pose or both drawn together, ``control_frames``), the kept frames at its start (the
previous window's last generated frames, masked as given) and the reference images,
and returns uint8 frames cropped back to the requested size.

Prompts are encoded once per job (``encode_prompts``), not once per window: the Wan
text encoder (UMT5-XXL) is the largest module, and with CPU offload it then leaves the
GPU for the rest of the shot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..contract.errors import BadRequest
from .callbacks import CancelCallback
from .refs import ModelRef, Progress, load_with_fallback

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

# The diffusers class each video pipeline needs, and the version that added it.
PIPELINE_CLASSES = {"WAN_VACE": ("WanVACEPipeline", "0.34"), "ANIMATEDIFF": ("AnimateDiffControlNetPipeline", "0.28")}
# Wan VACE: 4k + 1 frames, sides multiples of 16, at least 5 frames (one latent after the first).
# AnimateDiff: any frame count (motion modules trained on 16), sides multiples of 8.
FRAME_RULES = {"WAN_VACE": {"factor": 4, "multiple": 16, "min_frames": 5},
               "ANIMATEDIFF": {"factor": 1, "multiple": 8, "min_frames": 8}}
ANIMATEDIFF_CONTEXT = 16
# Wan's T5 embedding length (diffusers' default for WanVACEPipeline is 512; Wan was trained with 512).
MAX_SEQUENCE_LENGTH = 512


_available_lock = threading.Lock()
_available: dict[str, str | None] = {}  # pipeline -> None (available) or the reason it is not


def check_available(pipeline: str) -> None:
    """Raise a 400 naming ``video.pipeline`` when this engine's diffusers/torch cannot run it.

    Decided once per pipeline, under a lock: the answer cannot change while the engine runs, and
    asking diffusers while a worker thread is in the middle of importing it (a pipeline loading)
    once answered "unavailable" now and then (issue 22).
    """
    with _available_lock:
        if pipeline not in _available:
            _available[pipeline] = _unavailable_reason(pipeline)
        reason = _available[pipeline]
    if reason is not None:
        raise BadRequest(reason, field="video.pipeline", code="pipeline_unavailable")


def _unavailable_reason(pipeline: str) -> str | None:
    name, since = PIPELINE_CLASSES[pipeline]
    try:
        import diffusers
        import torch
    except ImportError as exc:  # pragma: no cover - the engine cannot start without them
        return f"video.pipeline: the engine lacks torch or diffusers ({exc})"
    # The lazily imported names, read without importing them: this runs on the HTTP thread, and
    # importing the pipeline module (transformers, UMT5) there could take longer than a request.
    names = set(getattr(diffusers, "__all__", ())) | set(dir(diffusers))
    if name in names:
        return None
    return (f"video.pipeline: {pipeline} needs diffusers.{name} (diffusers >= {since}), but this engine has "
            f"diffusers {diffusers.__version__} with torch {torch.__version__}. Upgrade the engine's diffusers "
            "(pip install -U diffusers in its environment) or generate this shot with the IMAGE generator.")


@dataclass(frozen=True)
class VideoKey:
    """What decides which video pipeline is loaded (the pipeline cache key)."""

    pipeline: str
    model: str
    motion_adapter: str | None
    depth: str | None
    pose: str | None
    device: str
    dtype: str
    cpu_offload: bool
    flow_shift: float | None

    @property
    def base(self) -> str:
        """The main model, under the name the pipeline cache logs for image keys."""
        return self.model


@dataclass
class LoadedVideo:
    key: VideoKey
    pipe: Any
    text_dtype: Any = None


def load_video(key: VideoKey, refs: dict[str, ModelRef | None], progress: Progress) -> LoadedVideo:
    """Load the video pipeline named by ``key``; worker thread."""
    import torch

    dtype = getattr(torch, key.dtype)
    model = refs["video"]
    assert model is not None
    progress("loading", {"model": model.value})
    if key.pipeline == "WAN_VACE":
        from diffusers import AutoencoderKLWan, WanVACEPipeline

        def load(offline: bool) -> Any:
            # The Wan VAE stays in float32 (diffusers' recommendation: fp16 VAE decoding bands).
            vae = AutoencoderKLWan.from_pretrained(model.value, subfolder="vae", torch_dtype=torch.float32,
                                                   use_safetensors=True, local_files_only=offline)
            return WanVACEPipeline.from_pretrained(model.value, vae=vae, torch_dtype=dtype, use_safetensors=True,
                                                   local_files_only=offline)

        pipe = load_with_fallback(model, load, progress)
        if key.flow_shift is not None:
            # Wan's shipped scheduler is UniPC with ``flow_shift``; flow-matching Euler names it ``shift``.
            config = pipe.scheduler.config
            name = "flow_shift" if "flow_shift" in config else "shift"
            pipe.scheduler = type(pipe.scheduler).from_config(config, **{name: key.flow_shift})
    else:
        from diffusers import AnimateDiffControlNetPipeline, DDIMScheduler, MotionAdapter, MultiControlNetModel

        from .loaders import load_base, load_controlnet

        adapter_ref = refs["motion_adapter"]
        assert adapter_ref is not None
        adapter = load_with_fallback(adapter_ref, lambda offline: MotionAdapter.from_pretrained(
            adapter_ref.value, torch_dtype=dtype, use_safetensors=True, local_files_only=offline), progress)
        base, family = load_base(model, dtype, progress)
        if family != "sd15":
            raise BadRequest("models.base: AnimateDiff ControlNet needs an SD 1.5 base model, got an SDXL one",
                             field="models.base", code="incompatible_model")
        nets = [load_controlnet(refs[name], dtype, base.unet.config.cross_attention_dim, progress)  # type: ignore[arg-type]
                for name in ("depth", "pose") if refs.get(name) is not None]
        if not nets:
            raise BadRequest("models.controlnet_depth: AnimateDiff ControlNet needs at least one ControlNet",
                             field="models.controlnet_depth")
        controlnet = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
        components = {k: v for k, v in base.components.items() if k not in ("safety_checker", "unet")}
        pipe = AnimateDiffControlNetPipeline(
            vae=components["vae"], text_encoder=components["text_encoder"], tokenizer=components["tokenizer"],
            unet=base.unet, motion_adapter=adapter, controlnet=controlnet,
            # AnimateDiff's recipe: DDIM, linear betas, trailing timesteps.
            scheduler=DDIMScheduler.from_config(base.scheduler.config, beta_schedule="linear",
                                                timestep_spacing="linspace", clip_sample=False, steps_offset=1),
        )
        pipe.to(dtype=dtype)
        # diffusers' sliding context windows (FreeNoise): a window longer than the 16 frames the motion
        # modules were trained on is denoised in overlapping 16-frame contexts.
        pipe.enable_free_noise(context_length=ANIMATEDIFF_CONTEXT, context_stride=4)
    pipe.set_progress_bar_config(disable=True)
    if key.cpu_offload:
        pipe.enable_model_cpu_offload(device=key.device)
    else:
        pipe.to(key.device)
    return LoadedVideo(key=key, pipe=pipe)


def encode_prompts(loaded: LoadedVideo, prompt: str, negative_prompt: str) -> tuple[Any, Any]:
    """(prompt, negative) embeddings (Wan) or texts (AnimateDiff), once per job; worker thread.

    Wan: the same tokenization and zero padding as ``WanVACEPipeline._get_t5_prompt_embeds``
    minus its ftfy clean-up (the add-on sends clean Unicode), so the engine does not need ftfy.
    """
    import torch

    pipe = loaded.pipe
    if loaded.key.pipeline != "WAN_VACE":
        # AnimateDiff's sliding contexts (FreeNoise) take prompt text, and CLIP encodes in milliseconds.
        return prompt, negative_prompt
    texts = [" ".join(t.split()) for t in (prompt, negative_prompt)]
    length = min(MAX_SEQUENCE_LENGTH, pipe.tokenizer.model_max_length)
    tokens = pipe.tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                            add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    encoder = pipe.text_encoder
    device = next(encoder.parameters()).device if not loaded.key.cpu_offload else pipe._execution_device
    with torch.no_grad():
        hidden = encoder(tokens.input_ids.to(device), tokens.attention_mask.to(device)).last_hidden_state
    lengths = tokens.attention_mask.gt(0).sum(dim=1)
    embeds = torch.zeros_like(hidden)
    for row, used in enumerate(lengths.tolist()):
        embeds[row, :used] = hidden[row, :used]
    embeds = embeds.to(dtype=pipe.transformer.dtype)
    return embeds[:1], embeds[1:]


def control_frames(depth: Sequence[np.ndarray | None], pose: Sequence[np.ndarray | None], control: str,
                   height: int, width: int) -> list[np.ndarray]:
    """The control video, H x W x 3 uint8 frames: depth as gray, pose drawings, or pose drawn over depth.

    ``depth`` frames are 0..1 float maps (H x W), ``pose`` frames RGB uint8 drawings or None
    (nobody visible). A missing map becomes black, which VACE reads as "no control here".
    """
    out = []
    for d, p in zip(depth, pose, strict=True):
        frame = np.zeros((height, width, 3), np.uint8)
        if control in ("DEPTH", "DEPTH_POSE") and d is not None:
            frame[:] = np.clip(np.rint(d * 255.0), 0, 255).astype(np.uint8)[..., None]
        if control in ("POSE", "DEPTH_POSE") and p is not None:
            drawn = p.max(axis=2) > 16
            frame[drawn] = p[drawn]
        out.append(frame)
    return out


def pad_to(image: np.ndarray, crop: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    """Place ``image`` at ``crop`` inside a ``height`` x ``width`` canvas, repeating its edges outward."""
    left, top, right, bottom = crop
    pads = ((top, height - bottom), (left, width - right)) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, pads, mode="edge")


@dataclass
class WindowInputs:
    """One window as the model sees it, already padded to the generation size and clip length."""

    controls: list[np.ndarray]  # length L, H x W x 3 uint8 at the generation size
    kept: list[np.ndarray]  # the first len(kept) frames are given (generation size, uint8)
    references: list[Any]  # PIL images
    net_controls: dict[str, list[np.ndarray]]  # AnimateDiff: per ControlNet ("depth", "pose"), length L
    seed: int
    width: int
    height: int


def run_window(loaded: LoadedVideo, inputs: WindowInputs, embeds: tuple[Any, Any], steps: int,
               guidance_scale: float, conditioning_scale: float,
               on_step: Callable[[int], bool]) -> tuple[list[np.ndarray] | None, float]:
    """Generate one window; returns (L uint8 frames at the generation size, or None if cancelled; seconds).

    ``on_step(step)`` runs after each denoising step and returns True to cancel, which stops
    the loop within that step (``callbacks.CancelCallback``). Worker thread.
    """
    import torch
    from PIL import Image

    pipe = loaded.pipe
    length = len(inputs.controls)
    generator = torch.Generator(device="cpu").manual_seed(int(inputs.seed))
    cancel = CancelCallback(on_step)
    started = time.perf_counter()
    if loaded.key.pipeline == "WAN_VACE":
        # 1. Kept frames are given (mask black), the rest generated under the control video (mask white).
        video = [Image.fromarray(f) for f in inputs.kept] + [Image.fromarray(f) for f in inputs.controls[len(inputs.kept):]]
        mask = [Image.new("L", (inputs.width, inputs.height), 0 if i < len(inputs.kept) else 255) for i in range(length)]
        result = cancel.call(
            pipe, video=video, mask=mask, reference_images=inputs.references or None,
            conditioning_scale=conditioning_scale, height=inputs.height, width=inputs.width, num_frames=length,
            num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator,
            prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], output_type="np",
        )
    else:
        # 1. AnimateDiff has no kept-frame input: the seam is blended along the flow afterwards.
        nets = [n for n in ("depth", "pose") if getattr(loaded.key, n)]
        frames = {n: [Image.fromarray(f) for f in inputs.net_controls[n]] for n in nets}
        conditioning = frames[nets[0]] if len(nets) == 1 else [frames[n] for n in nets]
        result = cancel.call(
            pipe, prompt=embeds[0], negative_prompt=embeds[1], num_frames=length, height=inputs.height,
            width=inputs.width, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator,
            conditioning_frames=conditioning, controlnet_conditioning_scale=conditioning_scale, output_type="np",
        )
    seconds = time.perf_counter() - started
    if result is None:
        return None, seconds
    video_out = np.asarray(result.frames[0])
    return [np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8) for f in video_out], seconds


def out_of_memory_message(request: Any, device: str, window: int) -> str:
    video = request.video
    tips = ["turn on CPU offload (Viewfinder preferences)", f"lower video.window (now {window} frames)"]
    if video.pipeline == "WAN_VACE" and "1.3B" not in video.model:
        tips.insert(0, "use Wan-AI/Wan2.1-VACE-1.3B-diffusers (about 8 GB at 480p with offload)")
    elif video.pipeline == "WAN_VACE":
        tips.append("lower the resolution (480p is the 1.3B model's size)")
    return (f"Out of memory on {device} generating a {request.width}x{request.height} video window of {window} "
            f"frames with {video.pipeline}: " + ", or ".join(tips) + ". Finished windows are kept: generate again to "
            "resume after the last one.")
