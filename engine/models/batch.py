"""Running a batch: one pipeline call for a batch of frames, text-to-image or img2img, with the
control maps, prompts (or prompt-travel embeddings) and seeds of each frame, cancellable per step.
Worker thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .callbacks import CancelCallback, FlowMatchBlendCallback, LatentBlendCallback
from .loaders import denoiser
from .pipelines import LoadedModels, call_params, failure_line
from .variants import control_call

if TYPE_CHECKING:
    import torch
    from PIL import Image


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
    # Per-map (start, end) (request/frame ``control_ranges``); a net missing here uses control_start/end.
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Per-frame text embeddings (prompt travel, engine/models/prompt_blend.py): when set they
    # replace prompt/negative_prompt, one row per frame of the batch.
    prompt_embeds: dict[str, Any] | None = None

    def controls(self, nets: tuple[str, ...]) -> tuple[list[float], list[tuple[float, float]]]:
        """Each net's weight and [start, end] (its own range, else control_start/end), in ``nets`` order."""
        return ([self.weights[kind] for kind in nets],
                [self.ranges.get(kind, (self.control_start, self.control_end)) for kind in nets])

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

    # 1. The variant with exactly the nets these frames have maps for, and its ControlNet arguments
    #    (per-map nets, or the family's union net in each map's control mode: engine/models/variants.py).
    pipe, kwargs = control_call(models, active_nets, [torch.stack(maps[name]) for name in active_nets],
                                *settings.controls(active_nets), img2img=False)
    n = len(seeds)
    # 2. One CPU generator per frame: a frame's noise depends on its seed only, not on
    #    the batch it lands in or the device, which keeps frames reproducible.
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    # 3. Denoise and decode.
    started = time.perf_counter()
    prompts = _prompt_kwargs(pipe, extra, settings.prompt_kwargs(n))
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
    models.set_fused(not getattr(denoiser(models.base), "peft_config", None))
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
        models.eager(failure_line(exc))
        for generator, state in zip(gens, states, strict=True):
            generator.set_state(state)
        return cancel.call(pipe, **kwargs)
    if first and result is not None:
        models.compiled_shapes.add(shape)
        if models.timings is not None:
            models.timings["compile_warmup_s"] = (models.timings.get("compile_warmup_s", 0.0)
                                                  + time.perf_counter() - started)
    return result


def _prompt_kwargs(pipe: Any, extra: dict[str, Any] | None, prompts: dict[str, Any]) -> dict[str, Any]:
    """The batch's prompts (text, or prompt-travel embeddings), unless ``extra`` brings its own
    embeddings (regional prompts, engine/characters/identity.py); ``extra``'s other arguments are added.

    Flux's guidance is distilled into the model: the engine runs it without true classifier-free guidance, so
    a negative prompt does nothing there, and its img2img pipelines do not take one: it is left out."""
    if extra and "prompt_embeds" in extra:
        return dict(extra)
    out = {**prompts, **(extra or {})}
    if "negative_prompt" not in call_params(type(pipe)):
        out.pop("negative_prompt", None)
    return out


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
    # 1. The img2img variant with exactly these nets, and its ControlNet arguments.
    images = [maps[name].unsqueeze(0) if single else torch.stack(maps[name]) for name in active_nets]
    pipe, kwargs = control_call(models, active_nets, images, *settings.controls(active_nets), img2img=True)
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    # img2img runs int(steps * strength) steps; at least one, or diffusers refuses.
    strength = min(1.0, max(float(strength), (1.0 + 1e-6) / settings.steps))
    # 2. Latent blending: the warped frames' latents and a fixed noise, on the latent grid.
    callbacks = []
    if keep_until > 0.0 and any(k is not None for k in keeps):
        callbacks.append(_latent_blend(pipe, inits, keeps, seeds, keep_until))
    # 3. Denoise from the noised warped frames and decode.
    started = time.perf_counter()
    # Plain img2img takes its size from ``init``; the ControlNet ones also accept width/height.
    if {"width", "height"} <= call_params(type(pipe)):
        kwargs.update(width=settings.width, height=settings.height)
    prompts = _prompt_kwargs(pipe, extra, settings.prompt_kwargs(None if single else n))
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
    """The blend callback for a batch: each frame's latents, mask (all 0 where it has none) and noise.

    Flux (a pipeline that packs its latents) holds them packed, 2x2 latent cells to a token, and noises them
    the flow-matching way (``FlowMatchBlendCallback``).
    """
    import torch

    packed = hasattr(pipe, "_pack_latents")
    rows: dict[str, list[Any]] = {"latents": [], "mask": [], "noise": []}
    for init, keep, seed in zip(inits, keeps, seeds, strict=True):
        latents, mask = _held_latents(pipe, init, keep)
        if packed:
            b, c, h, w = latents.shape
            latents = pipe._pack_latents(latents, b, c, h, w)
            # A token is held only when all four of its latent cells are.
            mask = -torch.nn.functional.max_pool2d(-mask, kernel_size=2).flatten(2).transpose(1, 2)
        noise = torch.randn(latents.shape, generator=torch.Generator(device="cpu").manual_seed(int(seed) + 1))
        rows["latents"].append(latents)
        rows["mask"].append(mask.to(device=latents.device, dtype=latents.dtype))
        rows["noise"].append(noise.to(device=latents.device, dtype=latents.dtype))
    kind = FlowMatchBlendCallback if packed else LatentBlendCallback
    return kind(**{name: torch.cat(parts) for name, parts in rows.items()}, until=until)


def _held_latents(pipe: Any, init: Image.Image, keep: Any) -> tuple[Any, Any]:
    """``init``'s latents as the pipeline scales them, and the latent cells to hold (all of whose pixels were
    carried: 8x8 on SD's VAE)."""
    import numpy as np
    import torch

    vae = pipe.vae
    device = getattr(vae, "device", torch.device("cpu"))
    pixels = torch.from_numpy(np.asarray(init.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
    pixels = pixels.permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=vae.dtype)
    with torch.no_grad():
        encoded = vae.encode(pixels)
        # AutoencoderTiny (draft tier) returns latents, not a distribution.
        latents = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
    shift = getattr(vae.config, "shift_factor", None) or 0.0  # Flux's VAE centres its latents
    latents = (latents - shift) * vae.config.scaling_factor
    held = np.zeros(init.size[::-1], dtype=np.float32) if keep is None else np.asarray(keep, dtype=np.float32)
    mask = -torch.nn.functional.max_pool2d(-torch.from_numpy(held)[None, None], kernel_size=pipe.vae_scale_factor)
    return latents, mask
