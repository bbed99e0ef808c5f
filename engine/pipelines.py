"""Loaded pipelines, kept in memory between jobs and keyed by their model settings.

One base pipeline plus its ControlNets make a ``LoadedModels``. Frames are run with
the variant that uses exactly the control maps they have: depth + pose, depth only,
pose only, or none, so a frame with nobody in it runs without the pose net rather
than with a black pose map. Variants share every module, so they cost no memory.
"""

from __future__ import annotations

import io
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .models import ModelRef, Progress, load_base, load_controlnet, load_lora

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

NET_ORDER = ("depth", "pose")


def resolve_device(requested: str) -> str:
    """'auto' picks CUDA, then Apple MPS, then the CPU; an explicit device must exist."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was asked for but this machine has no Apple MPS; use 'auto' or 'cpu'")
    return requested


def dtype_name(device: str) -> str:
    # Half precision on GPUs halves memory and doubles speed; CPUs lack fast fp16 kernels.
    return "float32" if device == "cpu" else "float16"


@dataclass(frozen=True)
class PipelineKey:
    base: str
    depth: str | None
    pose: str | None
    lora: str | None
    lora_scale: float
    device: str
    dtype: str
    attention_slicing: bool
    cpu_offload: bool


@dataclass
class LoadedModels:
    """A base pipeline, its ControlNets and the variants built from them."""

    key: PipelineKey
    base: Any
    family: str
    nets: dict[str, Any]
    variants: dict[tuple[str, ...], Any] = field(default_factory=dict)
    img2img_variants: dict[tuple[str, ...], Any] = field(default_factory=dict)
    active: Any = None
    # IP-Adapters loaded into this pipeline, by identity (engine/ip_adapter.py); issue 9.
    ip_adapters: dict[str, Any] = field(default_factory=dict)
    # Other modules loaded beside this pipeline (the draft tier's tiny VAEs: engine/draft.py).
    extras: dict[str, Any] = field(default_factory=dict)

    def img2img_variant(self, active_nets: tuple[str, ...]) -> Any:
        """The img2img pipeline (FLOW coherence) with exactly ``active_nets``; worker thread.

        Built from the text-to-image variant's modules, so it costs no memory.
        """
        if active_nets not in self.img2img_variants:
            from diffusers import (
                StableDiffusionControlNetImg2ImgPipeline,
                StableDiffusionImg2ImgPipeline,
                StableDiffusionXLControlNetImg2ImgPipeline,
                StableDiffusionXLImg2ImgPipeline,
            )

            components = dict(self.variant(active_nets).components)
            if not active_nets:
                components.pop("controlnet", None)
                cls = StableDiffusionXLImg2ImgPipeline if self.family == "sdxl" else StableDiffusionImg2ImgPipeline
            else:
                cls = (StableDiffusionXLControlNetImg2ImgPipeline if self.family == "sdxl"
                       else StableDiffusionControlNetImg2ImgPipeline)
            if self.family != "sdxl":
                components["requires_safety_checker"] = False
            pipe = cls(**{k: v for k, v in components.items() if k in _init_params(cls)})
            pipe.set_progress_bar_config(disable=True)
            self.img2img_variants[active_nets] = pipe
        return self._activate(self.img2img_variants[active_nets])

    def variant(self, active_nets: tuple[str, ...]) -> Any:
        """The pipeline that runs with exactly ``active_nets``; worker thread."""
        if active_nets not in self.variants:
            if not active_nets:
                self.variants[active_nets] = self.base
            else:
                from diffusers import (
                    MultiControlNetModel,
                    StableDiffusionControlNetPipeline,
                    StableDiffusionXLControlNetPipeline,
                )

                nets = [self.nets[name] for name in active_nets]
                controlnet = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
                components = dict(self.base.components)
                components.pop("controlnet", None)
                if self.family == "sdxl":
                    pipe = StableDiffusionXLControlNetPipeline(**components, controlnet=controlnet)
                else:
                    pipe = StableDiffusionControlNetPipeline(
                        **components, controlnet=controlnet, requires_safety_checker=False
                    )
                pipe.set_progress_bar_config(disable=True)
                self.variants[active_nets] = pipe
        return self._activate(self.variants[active_nets])

    def _activate(self, pipe: Any) -> Any:
        """Make ``pipe`` the one about to run; worker thread."""
        if self.key.cpu_offload and self.active is not pipe:
            # Offload hooks live on the shared modules: re-attach them for the variant
            # about to run so its ControlNets are moved on and off the GPU too.
            pipe.enable_model_cpu_offload(device=self.key.device)
        self.active = pipe
        return pipe


def _init_params(cls: type) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def _call_params(cls: type) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__call__).parameters)


def load_models(key: PipelineKey, refs: dict[str, ModelRef | None], lora_ref: ModelRef | None,
                progress: Progress) -> LoadedModels:
    """Load the base model and the ControlNets named in ``refs``; worker thread."""
    import torch
    from diffusers import UniPCMultistepScheduler

    dtype = getattr(torch, key.dtype)
    base_ref = refs["base"]
    assert base_ref is not None
    base, family = load_base(base_ref, dtype, progress)
    # UniPC reaches a clean image in 20 steps or fewer, the usual ControlNet recipe.
    base.scheduler = UniPCMultistepScheduler.from_config(base.scheduler.config)
    base.set_progress_bar_config(disable=True)
    nets: dict[str, Any] = {}
    for name in NET_ORDER:
        ref = refs.get(name)
        if ref is not None:
            nets[name] = load_controlnet(ref, dtype, base.unet.config.cross_attention_dim, progress)
    if lora_ref is not None:
        load_lora(base, lora_ref, key.lora_scale)
    if key.attention_slicing:
        base.enable_attention_slicing()
    if not key.cpu_offload:
        base.to(key.device)
        for net in nets.values():
            net.to(key.device)
    return LoadedModels(key=key, base=base, family=family, nets=nets)


class PipelineCache:
    """Keeps the last ``capacity`` loaded pipelines; used only by the worker thread."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = max(1, capacity)
        self._items: OrderedDict[PipelineKey, LoadedModels] = OrderedDict()

    def get(self, key: PipelineKey, loader: Callable[[], LoadedModels]) -> tuple[LoadedModels, bool]:
        """Return (models, was_cached); evicts the oldest before loading a new one."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key], True
        while len(self._items) >= self.capacity:
            old_key, _ = self._items.popitem(last=False)
            logger.info("Unloading pipeline %s", old_key.base)
            _free_memory()
        models = loader()
        self._items[key] = models
        return models, False

    def drop(self, key: PipelineKey) -> None:
        self._items.pop(key, None)
        _free_memory()


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# Control maps -------------------------------------------------------------------


def decode_depth(png: bytes) -> torch.Tensor:
    """16-bit (or 8-bit) grayscale depth PNG -> float tensor (3, H, W) in 0..1.

    Decoded from the full 16 bits: going through an 8-bit PIL mode would band the
    depth into 256 levels and the ControlNet would draw contour lines.
    """
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(img).astype(np.float32) / 65535.0
        else:
            array = np.asarray(img.convert("L")).astype(np.float32) / 255.0
    channel = torch.from_numpy(np.clip(array, 0.0, 1.0))
    return channel.unsqueeze(0).expand(3, -1, -1).contiguous()


def decode_rgb(png: bytes) -> torch.Tensor:
    """An OpenPose drawing (RGB PNG) -> float tensor (3, H, W) in 0..1."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        array = np.asarray(img.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class Cancelled(Exception):
    """Raised from the step callback to stop a pipeline call within the step that saw the cancel."""


def cancel_hooks(pipe: Any, should_stop: Callable[[], bool] | None) -> list[Any]:
    """Check for a cancel before every UNet and ControlNet block, not only between steps.

    At large sizes on a CPU one step can take minutes; with these hooks a cancel takes
    effect within one block of the network. Returns the hook handles to remove.
    """
    if should_stop is None:
        return []

    def check(module: Any, args: Any) -> None:
        if should_stop():
            raise Cancelled

    handles = []
    for name in ("unet", "controlnet"):
        model = getattr(pipe, name, None)
        nets = getattr(model, "nets", None) or ([model] if model is not None else [])
        for net in nets:
            for attribute in ("down_blocks", "mid_block", "up_blocks", "controlnet_down_blocks"):
                blocks = getattr(net, attribute, None)
                if blocks is None:
                    continue
                for block in (blocks if hasattr(blocks, "__iter__") else [blocks]):
                    if hasattr(block, "register_forward_pre_hook"):
                        handles.append(block.register_forward_pre_hook(check))
    return handles


@dataclass
class BatchSettings:
    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    width: int
    height: int
    weights: dict[str, float]
    control_start: float
    control_end: float
    # Per-frame text embeddings (prompt travel, engine/prompt_blend.py): when set they
    # replace prompt/negative_prompt, one row per frame of the batch.
    prompt_embeds: dict[str, Any] | None = None

    def prompt_kwargs(self, n: int | None) -> dict[str, Any]:
        """The pipeline's prompt arguments: lists for ``n`` frames, or plain strings when ``n`` is None."""
        if self.prompt_embeds is not None:
            return dict(self.prompt_embeds)
        if n is None:
            return {"prompt": self.prompt, "negative_prompt": self.negative_prompt}
        return {"prompt": [self.prompt] * n, "negative_prompt": [self.negative_prompt] * n}


def run_batch(models: LoadedModels, active_nets: tuple[str, ...], maps: dict[str, list[torch.Tensor]],
              seeds: Sequence[int], settings: BatchSettings,
              on_step: Callable[[int], bool],
              extra: dict[str, Any] | None = None,
              should_stop: Callable[[], bool] | None = None) -> tuple[list[Image.Image] | None, float]:
    """Generate one image per seed; returns (images or None if cancelled, model seconds).

    ``on_step(step)`` runs after every denoising step and returns True to cancel, which
    stops the loop within that step. ``extra``: more pipeline arguments (engine/identity.py);
    with ``prompt_embeds`` in it, the prompts are not passed as text. Worker thread.
    """
    import torch

    # 1. Pick the variant that has exactly the nets these frames have maps for.
    pipe = models.variant(active_nets)
    n = len(seeds)
    # 2. One CPU generator per frame: a frame's noise depends on its seed only, not on
    #    the batch it lands in or the device, which keeps frames reproducible.
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    kwargs = _control_kwargs(active_nets, [torch.stack(maps[name]) for name in active_nets], settings, "image")
    cancelled = False

    def callback(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        nonlocal cancelled
        if on_step(step + 1):
            cancelled = True
            raise Cancelled  # at once: no more steps, and no decode of half-denoised latents
        return tensors

    # 3. Denoise and decode.
    started = time.perf_counter()
    prompts = _prompt_kwargs(extra, settings.prompt_kwargs(n))
    result = _call_cancellable(
        pipe, should_stop, **prompts, num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
        width=settings.width, height=settings.height, generator=generators,
        callback_on_step_end=callback, output_type="pil", **kwargs,
    )
    model_s = time.perf_counter() - started
    if result is None:
        return None, model_s
    # An interrupted pipeline still decodes its half-denoised latents: drop them.
    return (None if cancelled else list(result.images)), model_s


def _call_cancellable(pipe: Any, should_stop: Callable[[], bool] | None, **kwargs: Any) -> Any:
    """``pipe(**kwargs)`` with cancel checked inside each step (``cancel_hooks``); None when it stopped there.

    The hooks come off again whatever happens, so a later call of a shared module is not stopped.
    """
    hooks = cancel_hooks(pipe, should_stop)
    try:
        return pipe(**kwargs)
    except Cancelled:
        return None
    finally:
        for hook in hooks:
            hook.remove()


def _prompt_kwargs(extra: dict[str, Any] | None, prompts: dict[str, Any]) -> dict[str, Any]:
    """The batch's prompts (text, or prompt-travel embeddings), unless ``extra`` brings its own
    embeddings (regional prompts, engine/identity.py); ``extra``'s other arguments are added."""
    if extra and "prompt_embeds" in extra:
        return dict(extra)
    return {**prompts, **(extra or {})}


def _control_kwargs(active_nets: tuple[str, ...], images: list[Any], settings: BatchSettings,
                    image_key: str) -> dict[str, Any]:
    """The ControlNet arguments of a diffusers call: one net passes single values, several pass lists.

    ``image_key`` is "image" for text-to-image and "control_image" for img2img.
    """
    if not active_nets:
        return {}
    scales = [settings.weights[name] for name in active_nets]
    return {
        image_key: images[0] if len(images) == 1 else images,
        "controlnet_conditioning_scale": scales[0] if len(scales) == 1 else scales,
        "control_guidance_start": settings.control_start,
        "control_guidance_end": settings.control_end,
    }


def run_img2img(models: LoadedModels, active_nets: tuple[str, ...], maps: dict[str, torch.Tensor],
                init: Image.Image, strength: float, seed: int, settings: BatchSettings,
                on_step: Callable[[int], bool], keep: Any = None,
                keep_until: float = 0.0, extra: dict[str, Any] | None = None,
                should_stop: Callable[[], bool] | None = None) -> tuple[Image.Image | None, float]:
    """One frame from ``init`` (the warped previous frame) at ``strength``; FLOW coherence.

    ``keep`` (H x W bool, True where the warp carried the pixel) with ``keep_until`` > 0
    holds those regions to the warped frame, noised to the current timestep, for the
    first ``keep_until`` of the denoising steps, so only the marked regions are free to
    be generated there (RePaint-style latent blending). Worker thread.
    """
    import numpy as np
    import torch

    # 1. The img2img variant with exactly these nets.
    pipe = models.img2img_variant(active_nets)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    # img2img runs int(steps * strength) steps; at least one, or diffusers refuses.
    strength = min(1.0, max(float(strength), (1.0 + 1e-6) / settings.steps))
    kwargs = _control_kwargs(active_nets, [maps[name].unsqueeze(0) for name in active_nets], settings,
                             "control_image")
    # 2. Latent blending: the warped frame's latents and a fixed noise, on the latent grid.
    blend: dict[str, Any] | None = None
    if keep is not None and keep_until > 0.0:
        vae = pipe.vae
        device = getattr(vae, "device", torch.device("cpu"))
        pixels = torch.from_numpy(np.asarray(init.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
        pixels = pixels.permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=vae.dtype)
        with torch.no_grad():
            encoded = vae.encode(pixels)
            # AutoencoderTiny (draft tier) returns latents, not a distribution.
            latents = (encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents) \
                * vae.config.scaling_factor
        # A latent cell is held only when all of its 8x8 pixels were carried.
        mask = torch.from_numpy(np.asarray(keep, dtype=np.float32))[None, None]
        mask = -torch.nn.functional.max_pool2d(-mask, kernel_size=pipe.vae_scale_factor)
        noise = torch.randn(latents.shape, generator=torch.Generator(device="cpu").manual_seed(int(seed) + 1))
        blend = {"latents": latents, "mask": mask.to(device=device, dtype=latents.dtype),
                 "noise": noise.to(device=device, dtype=latents.dtype), "until": keep_until}
    cancelled = False

    def callback(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        nonlocal cancelled
        if on_step(step + 1):
            cancelled = True
            raise Cancelled  # at once: no more steps, and no decode of half-denoised latents
        if blend is not None:
            timesteps = pipeline.scheduler.timesteps
            index = int((timesteps == timestep).nonzero()[0][0]) if (timesteps == timestep).any() else -1
            run = pipeline._num_timesteps
            if 0 <= index < len(timesteps) - 1 and (step + 1) < blend["until"] * run:
                held = pipeline.scheduler.add_noise(blend["latents"], blend["noise"], timesteps[index + 1:index + 2])
                current = tensors["latents"]
                tensors["latents"] = blend["mask"] * held.to(current.dtype) + (1 - blend["mask"]) * current
        return tensors

    # 3. Denoise from the noised warped frame and decode.
    started = time.perf_counter()
    # Plain img2img takes its size from ``init``; the ControlNet ones also accept width/height.
    if {"width", "height"} <= _call_params(type(pipe)):
        kwargs.update(width=settings.width, height=settings.height)
    prompts = _prompt_kwargs(extra, settings.prompt_kwargs(None))
    result = _call_cancellable(
        pipe, should_stop, **prompts, image=init, strength=strength,
        num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale, generator=generator,
        callback_on_step_end=callback, output_type="pil", **kwargs,
    )
    model_s = time.perf_counter() - started
    if result is None:
        return None, model_s
    return (None if cancelled else result.images[0]), model_s
