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
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .callbacks import CancelCallback, LatentBlendCallback
from .refs import ModelRef, Progress, load_base, load_controlnet, load_lora

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

Loaded = TypeVar("Loaded")  # what a PipelineCache holds: LoadedModels, or a video model

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


PRECISIONS = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def dtype_name(device: str, precision: str = "auto") -> str:
    """The torch dtype name for ``precision`` ('auto': by device) on ``device``.

    'auto': fp32 on the CPU, fp16 elsewhere (half the memory, tensor cores). On this project's
    CPU bf16 ran the mid-preset UNet 1.2x faster than fp32 (README, Benchmarks), but it changes
    the frames (mean 0.7 levels of 255 on the tiny models) and so every cached frame's key:
    fp32 stays the CPU default, bf16 is ``--precision bf16``. On CUDA fp16 against bf16 is not
    measured (no GPU was lent): fp16 is the default because SD 1.5 is usually run in it; the GPU
    benchmark protocol in the README compares both.
    """
    if precision == "auto":
        return "float32" if device == "cpu" else "float16"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {precision!r}")
    return PRECISIONS[precision]


# Test hook: makes torch.compile fail at its first call, as it does on a machine without a working
# compiler toolchain, so the tests can check the fallback to eager mode. Unset in normal use.
FAULT_COMPILE_ENV = "VIEWFINDER_ENGINE_TEST_COMPILE_FAIL"


@dataclass(frozen=True)
class SpeedOptions:
    """The GPU path's engine-wide options (``python -m engine serve --precision/--compile``, or the
    ``VIEWFINDER_ENGINE_*`` variables below). None: the device's default (on for CUDA, off elsewhere).

    Only ``precision`` changes frames beyond float rounding, and it enters the cache keys (as the
    dtype). Channels-last, fused QKV and compile give the same frames within a tolerance
    (tests/engine/test_gpu_path.py), so like the batch size they stay out of the keys.
    """

    precision: str = "auto"
    channels_last: bool | None = None
    fuse_qkv: bool | None = None
    compile: str = ""  # a torch.compile backend ("inductor"), or "" for eager

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> SpeedOptions:
        """VIEWFINDER_ENGINE_PRECISION=auto|fp16|bf16|fp32, VIEWFINDER_ENGINE_COMPILE=0|1|<backend>,
        VIEWFINDER_ENGINE_CHANNELS_LAST / VIEWFINDER_ENGINE_FUSE_QKV=auto|0|1; ValueError naming a bad one."""
        import os

        env = dict(os.environ if env is None else env)

        def switch(name: str) -> bool | None:
            value = env.get(name, "auto").strip().lower()
            if value not in ("auto", "", "0", "1", "on", "off", "true", "false"):
                raise ValueError(f"{name}={value!r}: use auto, 0 or 1")
            return None if value in ("auto", "") else value in ("1", "on", "true")

        precision = env.get("VIEWFINDER_ENGINE_PRECISION", "auto").strip().lower() or "auto"
        dtype_name("cpu", precision)  # raises for an unknown one
        compile_value = env.get("VIEWFINDER_ENGINE_COMPILE", "0").strip()
        backend = "" if compile_value.lower() in ("", "0", "off", "false") else (
            "inductor" if compile_value.lower() in ("1", "on", "true") else compile_value)
        return cls(precision=precision, channels_last=switch("VIEWFINDER_ENGINE_CHANNELS_LAST"),
                   fuse_qkv=switch("VIEWFINDER_ENGINE_FUSE_QKV"), compile=backend)

    def key_fields(self, device: str, cpu_offload: bool = False) -> dict[str, Any]:
        """The PipelineKey fields these options give a job on ``device``."""
        gpu = device == "cuda"
        return {
            "dtype": dtype_name(device, self.precision),
            "channels_last": gpu if self.channels_last is None else self.channels_last,
            "fused_qkv": gpu if self.fuse_qkv is None else self.fuse_qkv,
            # Offload hooks move modules between devices inside the call: no compile there.
            "compile": "" if cpu_offload else self.compile,
        }


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
    # The GPU path (SpeedOptions); the defaults are the plain path, so older keys are unchanged.
    channels_last: bool = False
    fused_qkv: bool = False
    compile: str = ""


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
    # IP-Adapters loaded into this pipeline, by identity (engine/characters/ip_adapter.py); issue 9.
    ip_adapters: dict[str, Any] = field(default_factory=dict)
    # GPU path: attention processors saved before fusing QKV (to unfuse for character jobs),
    # the call shapes already compiled, the compile failure (then eager), and the running job's
    # timings, where the compile warm-up is reported (``compile_warmup_s``).
    unfused: list[tuple[Any, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    compiled_shapes: set[tuple[Any, ...]] = field(default_factory=set)
    compile_error: str | None = None
    timings: dict[str, float] | None = None

    def set_fused(self, fused: bool) -> None:
        """Fused or separate QKV projections; worker thread, before a call.

        LoRA adapters (character LoRAs, engine/characters/identity.py; distillation LoRAs) are PEFT layers
        on to_q/to_k/to_v, which a fused to_qkv would bypass: ``_call_models`` runs unfused
        while the UNet has adapters. Only the stock processors are swapped, so processors a job
        installed for the call (regional prompts, IP-Adapter: engine/characters/regional.py, which read
        to_q/to_k/to_v themselves) stay. The fused weights are made once at load (after the base
        LoRA is fused in) and PEFT keeps the base weights, so switching is only a processor swap,
        with the same processor objects (a compiled graph is not invalidated by new ones).
        """
        for module, plain, fused_processors in self.unfused:
            current = module.attn_processors
            source, target = (plain, fused_processors) if fused else (fused_processors, plain)
            wanted = {name: target[name] if name in source and proc is source[name] else proc
                      for name, proc in current.items()}
            if any(wanted[name] is not current[name] for name in current):
                module.set_attn_processor(wanted)

    def eager(self, reason: str) -> None:
        """Leave compiled mode for good (this pipeline): one warning, the job goes on eagerly."""
        if self.compile_error is None:
            logger.warning("torch.compile failed (%s); running eagerly (same frames, slower). Turn the "
                           "Compile preference off to skip the attempt.", reason)
        self.compile_error = reason
        for module in self.compiled_modules():
            module._compiled_call_impl = None

    def compiled_modules(self) -> list[Any]:
        return [m for m in [self.base.unet, *self.nets.values()] if getattr(m, "_compiled_call_impl", None)]
    # Other modules loaded beside this pipeline (the draft tier's tiny VAEs: engine/models/draft.py).
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
    models = LoadedModels(key=key, base=base, family=family, nets=nets)
    speed_up(models)
    return models


def attention_kinds(module: Any) -> set[str]:
    """The class names of ``module``'s attention processors."""
    return {type(p).__name__ for p in module.attn_processors.values()}


def speed_up(models: LoadedModels) -> None:
    """The GPU path on a loaded pipeline: SDPA attention, channels-last, fused QKV, compile.

    Each step is what its key field asks for; with the defaults only the SDPA check runs.
    """
    import os

    import torch

    key = models.key
    modules = [models.base.unet, *models.nets.values()]
    # 1. Scaled-dot-product attention (flash / memory-efficient kernels), diffusers' default:
    #    checked, and set where a model came with the plain processor. Slicing keeps its own.
    if not key.attention_slicing:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        for module in modules:
            if any(type(p) is AttnProcessor for p in module.attn_processors.values()):
                logger.info("Setting SDPA attention on %s", type(module).__name__)
                module.set_attn_processor(AttnProcessor2_0())
    # 2. Channels-last: convolutions in NHWC, the layout the GPU's tensor cores want.
    if key.channels_last:
        for module in modules:
            module.to(memory_format=torch.channels_last)
    # 3. One matmul for Q, K and V (K and V for cross-attention).
    if key.fused_qkv and not key.attention_slicing:
        from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

        for module in modules:
            saved = module.attn_processors
            if any("Added" in type(p).__name__ for p in saved.values()):
                continue  # diffusers cannot fuse added KV projections
            for sub in module.modules():
                if isinstance(sub, Attention):
                    sub.fuse_projections(fuse=True)
            module.set_attn_processor(FusedAttnProcessor2_0())
            models.unfused.append((module, saved, module.attn_processors))
    # 4. torch.compile, in place (the pipelines keep their modules); it compiles at the first
    #    call of each shape, which run_batch / run_img2img time as the warm-up.
    if key.compile:
        backend: Any = key.compile
        if os.environ.get(FAULT_COMPILE_ENV):
            def backend(gm: Any, example_inputs: Any) -> Any:  # noqa: ARG001
                raise RuntimeError("compiler failure injected by " + FAULT_COMPILE_ENV)
        try:
            for module in modules:
                module.compile(backend=backend)
        except Exception as exc:  # noqa: BLE001 - any compile failure means eager mode
            models.eager(_failure(exc))


def _failure(exc: BaseException) -> str:
    """A one-line reason for a compile failure: the outer error and the one at its root."""
    root = exc
    for _ in range(10):  # dynamo keeps the backend's own error as ``inner_exception``
        inner = getattr(root, "inner_exception", None) or root.__cause__
        if not isinstance(inner, BaseException) or inner is root:
            break
        root = inner

    def line(e: BaseException) -> str:
        text = next((t.strip() for t in str(e).splitlines() if t.strip()), "")
        return f"{type(e).__name__}: {text[:200]}"

    return line(exc) if root is exc else f"{type(exc).__name__} ({line(root)})"


class PipelineCache:
    """Keeps the last ``capacity`` loaded pipelines (image ``LoadedModels`` keyed by ``PipelineKey``,
    video ones by ``VideoKey``); used only by the worker thread."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = max(1, capacity)
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, loader: Callable[[], Loaded]) -> tuple[Loaded, bool]:
        """Return (models, was_cached); evicts the oldest before loading a new one."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key], True
        while len(self._items) >= self.capacity:
            old_key, _ = self._items.popitem(last=False)
            # An image pipeline is named by its base model, a video one by its model.
            logger.info("Unloading pipeline %s", getattr(old_key, "base", None) or getattr(old_key, "model", old_key))
            _free_memory()
        models = loader()
        self._items[key] = models
        return models, False

    def drop(self, key: Hashable) -> None:
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


@dataclass
class BatchSettings:
    # One text for the whole batch, or one per frame (FLOW shots interleaved into one batch).
    prompt: str | list[str]
    negative_prompt: str | list[str]
    steps: int
    guidance_scale: float
    width: int
    height: int
    weights: dict[str, float]
    control_start: float
    control_end: float
    # Per-frame text embeddings (prompt travel, engine/models/prompt_blend.py): when set they
    # replace prompt/negative_prompt, one row per frame of the batch.
    prompt_embeds: dict[str, Any] | None = None

    def prompt_kwargs(self, n: int | None) -> dict[str, Any]:
        """The pipeline's prompt arguments: lists for ``n`` frames, or plain strings when ``n`` is None."""
        if self.prompt_embeds is not None:
            return dict(self.prompt_embeds)
        if isinstance(self.prompt, list):
            return {"prompt": list(self.prompt), "negative_prompt": list(self.negative_prompt)}
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
    stops the loop within that step (``callbacks.CancelCallback``). ``extra``: more pipeline
    arguments (engine/characters/identity.py); with ``prompt_embeds`` in it, the prompts are not passed
    as text. Worker thread.
    """
    import torch

    # 1. Pick the variant that has exactly the nets these frames have maps for.
    pipe = models.variant(active_nets)
    n = len(seeds)
    # 2. One CPU generator per frame: a frame's noise depends on its seed only, not on
    #    the batch it lands in or the device, which keeps frames reproducible.
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    kwargs = _control_kwargs(active_nets, [torch.stack(maps[name]) for name in active_nets], settings, "image")
    # 3. Denoise and decode.
    started = time.perf_counter()
    prompts = _prompt_kwargs(extra, settings.prompt_kwargs(n))
    result = _call_models(
        models, pipe, CancelCallback(on_step, should_stop), **prompts, num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale, width=settings.width, height=settings.height, generator=generators,
        output_type="pil", **kwargs,
    )
    return (None if result is None else list(result.images)), time.perf_counter() - started


def _call_models(models: LoadedModels, pipe: Any, cancel: CancelCallback, **kwargs: Any) -> Any:
    """``cancel.call(pipe, **kwargs)`` on ``models``' pipeline, with the compile warm-up timed and reported.

    With compiled nets, the first call of each shape compiles; its seconds go to the job's
    ``timings["compile_warmup_s"]`` (they are in ``model_s`` too). If that first call fails (no
    working compiler on this machine, an unsupported op), the pipeline drops to eager mode with
    one warning and the call runs again from the same noise, so the job does not fail.
    """
    # Separate projections while LoRA adapters are loaded (set_fused); regional and IP-Adapter
    # processors (engine/characters/regional.py) read to_q/to_k/to_v themselves, which stay in place.
    models.set_fused(not getattr(models.base.unet, "peft_config", None))
    if not models.compiled_modules():
        return cancel.call(pipe, **kwargs)
    gens = kwargs.get("generator")
    gens = gens if isinstance(gens, list) else [gens] if gens is not None else []
    states = [g.get_state() for g in gens]
    image = kwargs.get("image")
    size = (kwargs.get("width"), kwargs.get("height")) if "width" in kwargs else getattr(image, "size", None)
    shape = (id(pipe), size, max(1, len(gens)), float(kwargs.get("guidance_scale", 1.0)) > 1.0)
    first = shape not in models.compiled_shapes
    started = time.perf_counter()
    try:
        result = cancel.call(pipe, **kwargs)
    except Exception as exc:
        from ..contract.errors import EngineFault, is_out_of_memory

        if not first or is_out_of_memory(exc) or isinstance(exc, EngineFault):
            raise  # a request's own error or memory: not the compiler's
        models.eager(_failure(exc))
        for generator, state in zip(gens, states, strict=True):
            generator.set_state(state)
        return cancel.call(pipe, **kwargs)
    if first and result is not None:
        models.compiled_shapes.add(shape)
        if models.timings is not None:
            models.timings["compile_warmup_s"] = (models.timings.get("compile_warmup_s", 0.0)
                                                  + time.perf_counter() - started)
    return result


def _prompt_kwargs(extra: dict[str, Any] | None, prompts: dict[str, Any]) -> dict[str, Any]:
    """The batch's prompts (text, or prompt-travel embeddings), unless ``extra`` brings its own
    embeddings (regional prompts, engine/characters/identity.py); ``extra``'s other arguments are added."""
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
                init: Image.Image | Sequence[Image.Image], strength: float, seed: int | Sequence[int],
                settings: BatchSettings, on_step: Callable[[int], bool], keep: Any = None,
                keep_until: float = 0.0, extra: dict[str, Any] | None = None,
                should_stop: Callable[[], bool] | None = None) -> tuple[Any, float]:
    """Frames from ``init`` (the warped previous frames) at ``strength``; FLOW coherence.

    One frame (``init`` an image, ``seed`` an int, ``maps`` one tensor per net, ``keep`` one
    mask): returns (image or None if cancelled, model seconds). A batch (``init`` a list,
    ``seed`` a list, ``maps`` one list per net, ``keep`` a list of masks or None): returns
    (list of images or None, seconds); each frame's noise comes from its own seed, as alone.
    ``keep`` (H x W bool, True where the warp carried the pixel) with ``keep_until`` > 0
    holds those regions to the warped frame, noised to the current timestep, for the
    first ``keep_until`` of the denoising steps, so only the marked regions are free to
    be generated there (``callbacks.LatentBlendCallback``). Worker thread.
    """
    import torch

    single = not isinstance(init, (list, tuple))
    inits: list[Image.Image] = [init] if single else list(init)  # type: ignore[list-item]
    seeds = [int(seed)] if single else [int(s) for s in seed]  # type: ignore[union-attr, arg-type]
    keeps = [keep] if single else list(keep or [None] * len(inits))
    n = len(inits)
    # 1. The img2img variant with exactly these nets.
    pipe = models.img2img_variant(active_nets)
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    # img2img runs int(steps * strength) steps; at least one, or diffusers refuses.
    strength = min(1.0, max(float(strength), (1.0 + 1e-6) / settings.steps))
    images = [maps[name].unsqueeze(0) if single else torch.stack(maps[name]) for name in active_nets]
    kwargs = _control_kwargs(active_nets, images, settings, "control_image")
    # 2. Latent blending: the warped frames' latents and a fixed noise, on the latent grid.
    callbacks = []
    if keep_until > 0.0 and any(k is not None for k in keeps):
        callbacks.append(_latent_blend(pipe, inits, keeps, seeds, keep_until))
    # 3. Denoise from the noised warped frames and decode.
    started = time.perf_counter()
    # Plain img2img takes its size from ``init``; the ControlNet ones also accept width/height.
    if {"width", "height"} <= _call_params(type(pipe)):
        kwargs.update(width=settings.width, height=settings.height)
    prompts = _prompt_kwargs(extra, settings.prompt_kwargs(None if single else n))
    result = _call_models(
        models, pipe, CancelCallback(on_step, should_stop), **prompts, image=inits[0] if single else inits, strength=strength,
        num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
        generator=generators[0] if single else generators, output_type="pil", callbacks=callbacks, **kwargs,
    )
    model_s = time.perf_counter() - started
    if result is None:
        return None, model_s
    return (result.images[0] if single else list(result.images)), model_s


def _latent_blend(pipe: Any, inits: list[Image.Image], keeps: list[Any], seeds: list[int],
                  until: float) -> LatentBlendCallback:
    """The blend callback for a batch: each frame's latents, mask (all 0 where it has none) and noise."""
    import numpy as np
    import torch

    vae = pipe.vae
    device = getattr(vae, "device", torch.device("cpu"))
    rows: dict[str, list[Any]] = {"latents": [], "mask": [], "noise": []}
    for init, keep, seed in zip(inits, keeps, seeds, strict=True):
        pixels = torch.from_numpy(np.asarray(init.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
        pixels = pixels.permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=vae.dtype)
        with torch.no_grad():
            encoded = vae.encode(pixels)
            # AutoencoderTiny (draft tier) returns latents, not a distribution.
            latents = (encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents) \
                * vae.config.scaling_factor
        # A latent cell is held only when all of its 8x8 pixels were carried.
        held = np.zeros(init.size[::-1], dtype=np.float32) if keep is None else np.asarray(keep, dtype=np.float32)
        mask = -torch.nn.functional.max_pool2d(-torch.from_numpy(held)[None, None], kernel_size=pipe.vae_scale_factor)
        noise = torch.randn(latents.shape, generator=torch.Generator(device="cpu").manual_seed(int(seed) + 1))
        rows["latents"].append(latents)
        rows["mask"].append(mask.to(device=device, dtype=latents.dtype))
        rows["noise"].append(noise.to(device=device, dtype=latents.dtype))
    return LatentBlendCallback(**{name: torch.cat(parts) for name, parts in rows.items()}, until=until)
