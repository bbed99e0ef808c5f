"""Loaded pipelines, kept in memory between jobs and keyed by their model settings.

One base pipeline plus its ControlNets make a ``LoadedModels``. Frames are run with
the variant that uses exactly the control maps they have (any subset of ``NET_ORDER``,
engine/contract/schedule.py ``frame_nets``): a frame with nobody in it runs without the
pose net rather than with a black pose map, a frame without a normal map without the
normal net. Variants share every module, so they cost no memory. The normal, line-art
and segmentation nets are loaded only for a job where some frame has that map, so a
depth + pose job's key and memory are what they were before issue 23.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .families import FAMILIES
from .loaders import denoiser, load_base, load_controlnet, load_lora, load_union, text_width
from .refs import ModelRef, Progress

logger = logging.getLogger(__name__)

Loaded = TypeVar("Loaded")  # what a PipelineCache holds: LoadedModels, or a video model

# The order ControlNets are stacked in a MultiControlNetModel, and the per-net lists passed with it.
NET_ORDER = ("depth", "pose", "normal", "lineart", "seg")


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
    CPU bf16 ran the mid-preset UNet 1.2x faster than fp32 (docs/benchmarks.md), but it changes
    the frames (mean 0.7 levels of 255 on the tiny models) and so every cached frame's key:
    fp32 stays the CPU default, bf16 is ``--precision bf16``. On CUDA fp16 against bf16 is not
    measured (no GPU was lent): fp16 is the default because SD 1.5 is usually run in it; the GPU
    benchmark protocol in docs/benchmarks.md compares both.
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
    # Issue 23: set only when some frame of the job runs that map, so other keys are unchanged.
    normal: str | None = None
    lineart: str | None = None
    seg: str | None = None
    # Issue 24: the family (engine/models/families.py) and the union ControlNet serving every map it has a
    # mode for (then the per-map fields above are None). The defaults are every older job's pipeline.
    family: str = "sd15"
    union: str | None = None

    def net_kinds(self) -> tuple[str, ...]:
        """The maps this pipeline's ControlNets take, in NET_ORDER."""
        if self.union is not None:
            return tuple(kind for kind in NET_ORDER if kind in FAMILIES[self.family].union_modes)
        return tuple(kind for kind in NET_ORDER if getattr(self, kind) is not None)

    def net_identity(self, kind: str) -> str | None:
        """The identity of the net that takes map ``kind`` (the union's, when there is one)."""
        if self.union is not None:
            return self.union if kind in self.net_kinds() else None
        return getattr(self, kind)


@dataclass
class LoadedModels:
    """A base pipeline, its ControlNets and the variants built from them."""

    key: PipelineKey
    base: Any
    family: str
    nets: dict[str, Any]  # by map kind, or {"union": net}
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
        return [m for m in [denoiser(self.base), *self.nets.values()] if getattr(m, "_compiled_call_impl", None)]
    # Other modules loaded beside this pipeline (the draft tier's tiny VAEs: engine/models/draft.py).
    extras: dict[str, Any] = field(default_factory=dict)

    def activate(self, pipe: Any) -> Any:
        """Make ``pipe`` (a variant: engine/models/variants.py) the one about to run; worker thread."""
        if self.key.cpu_offload and self.active is not pipe:
            # Offload hooks live on the shared modules: re-attach them for the variant
            # about to run so its ControlNets are moved on and off the GPU too.
            pipe.enable_model_cpu_offload(device=self.key.device)
        self.active = pipe
        return pipe


def call_params(cls: type) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__call__).parameters)


def load_models(key: PipelineKey, refs: dict[str, ModelRef | None], lora_ref: ModelRef | None,
                progress: Progress) -> LoadedModels:
    """Load the base model of ``key.family`` and the ControlNets named in ``refs``; worker thread."""
    import torch
    from diffusers import UniPCMultistepScheduler

    dtype = getattr(torch, key.dtype)
    base_ref = refs["base"]
    assert base_ref is not None
    fam = FAMILIES[key.family]
    base, family = load_base(base_ref, dtype, progress, family=fam.name)
    if fam.name != "flux":
        # UniPC reaches a clean image in 20 steps or fewer, the usual ControlNet recipe. Flux keeps its
        # flow-matching scheduler (UniPC would need its flow settings).
        base.scheduler = UniPCMultistepScheduler.from_config(base.scheduler.config)
    base.set_progress_bar_config(disable=True)
    width = text_width(base)
    nets: dict[str, Any] = {}
    union_ref = refs.get("union")
    if key.union is not None and union_ref is not None:
        nets["union"] = load_union(union_ref, fam, dtype, width, progress)
    for name in NET_ORDER if key.union is None else ():
        ref = refs.get(name)
        if ref is not None:
            nets[name] = load_controlnet(ref, dtype, width, progress)
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
    modules = [denoiser(models.base), *models.nets.values()]
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
            if any("Added" in type(p).__name__ or "Flux" in type(p).__name__ for p in saved.values()):
                continue  # diffusers cannot fuse added KV projections, nor Flux's joint attention this way
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
            models.eager(failure_line(exc))


def failure_line(exc: BaseException) -> str:
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
