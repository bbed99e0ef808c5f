"""Step-end callbacks of a pipeline call, in the shape of diffusers' ``callbacks.py``.

A ``PipelineCallback`` is called as ``callback(pipeline, step, timestep, tensors)`` after
every denoising step and returns ``tensors`` (possibly changed); ``tensor_inputs`` names
the tensors it needs. ``MultiPipelineCallbacks`` runs several in order. diffusers
pipelines take either as ``callback_on_step_end`` (with ``callback_on_step_end_tensor_inputs``
set from ``tensor_inputs``). Callbacks read the pipeline's public attributes only
(``scheduler``, ``num_timesteps``).

- ``CancelCallback``: progress and cancel. After each step it reports the step and
  stops the call when asked; while a step runs it checks before every UNet and ControlNet
  block (at large sizes on a CPU one step can take minutes). The check is a host-side
  flag: no host-device sync.
- ``LatentBlendCallback``: FLOW's latent blending (RePaint-style), per frame of the batch;
  ``FlowMatchBlendCallback`` the same for Flux's packed, flow-matching latents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any


class Cancelled(Exception):
    """Raised inside a pipeline call to stop it within the step (or block) that saw the cancel."""


class PipelineCallback:
    """One step-end callback: ``__call__`` returns the (possibly changed) ``tensors``."""

    tensor_inputs: list[str] = []

    def __call__(self, pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class MultiPipelineCallbacks:
    """Several callbacks run in order as one ``callback_on_step_end``."""

    def __init__(self, callbacks: Sequence[PipelineCallback]) -> None:
        self.callbacks = list(callbacks)

    @property
    def tensor_inputs(self) -> list[str]:
        return sorted({name for callback in self.callbacks for name in callback.tensor_inputs})

    def __call__(self, pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        for callback in self.callbacks:
            tensors = callback(pipeline, step, timestep, tensors)
        return tensors


class CancelCallback(PipelineCallback):
    """Progress after every step, and a cancel that stops the call within the step that saw it.

    ``on_step(step)`` (1-based) records progress and returns True to cancel; ``should_stop()``
    is also checked before every UNet and ControlNet block while ``watch(pipe)`` is active.
    ``cancelled`` tells afterwards whether the call stopped early (then it has no images:
    half-denoised latents are never decoded).
    """

    def __init__(self, on_step: Callable[[int], bool], should_stop: Callable[[], bool] | None = None) -> None:
        self.on_step = on_step
        self.should_stop = should_stop
        self.cancelled = False

    def __call__(self, pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if self.on_step(step + 1):
            self.cancelled = True
            raise Cancelled  # at once: no more steps, and no decode of half-denoised latents
        return tensors

    def _check(self, module: Any, args: Any) -> None:
        if self.should_stop is not None and self.should_stop():
            self.cancelled = True
            raise Cancelled

    @contextmanager
    def watch(self, pipe: Any) -> Iterator[None]:
        """Block-level checks on ``pipe``'s UNet and ControlNets for the duration; removed whatever happens,
        so a later call of a shared module is not stopped."""
        handles = []
        if self.should_stop is not None:
            for name in ("unet", "transformer", "controlnet"):
                model = getattr(pipe, name, None)
                nets = getattr(model, "nets", None) or ([model] if model is not None else [])
                for net in nets:
                    if getattr(net, "_compiled_call_impl", None) is not None:
                        # Python hooks inside a compiled graph would break it at every block and
                        # recompile at every call: compiled nets stop at the end of a step instead.
                        continue
                    for attribute in ("down_blocks", "mid_block", "up_blocks", "controlnet_down_blocks",
                                      "transformer_blocks", "single_transformer_blocks"):
                        blocks = getattr(net, attribute, None)
                        if blocks is None:
                            continue
                        for block in (blocks if hasattr(blocks, "__iter__") else [blocks]):
                            if hasattr(block, "register_forward_pre_hook"):
                                handles.append(block.register_forward_pre_hook(self._check))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def call(self, pipe: Any, **kwargs: Any) -> Any:
        """``pipe(**kwargs)`` with this callback (and any ``extra`` callbacks given as ``callbacks``);
        None when cancelled."""
        extra: list[PipelineCallback] = kwargs.pop("callbacks", [])
        callbacks = MultiPipelineCallbacks([self, *extra])
        with self.watch(pipe):
            try:
                result = pipe(**kwargs, callback_on_step_end=callbacks,
                              callback_on_step_end_tensor_inputs=callbacks.tensor_inputs or ["latents"])
            except Cancelled:
                return None
        return None if self.cancelled else result


class LatentBlendCallback(PipelineCallback):
    """Holds carried regions to the warped frames for the first ``until`` of the steps (FLOW).

    ``latents``, ``mask`` and ``noise`` have one row per frame of the batch: after step i
    the latents take, where ``mask`` is 1, the warped frame's latents noised to the next
    timestep. The step's index in the scheduler's schedule follows from the pipeline's
    ``num_timesteps`` (img2img runs the schedule's last ``num_timesteps`` steps), so no
    tensor is read back to the host.
    """

    tensor_inputs = ["latents"]

    def __init__(self, latents: Any, mask: Any, noise: Any, until: float) -> None:
        self.latents, self.mask, self.noise, self.until = latents, mask, noise, until

    def __call__(self, pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        timesteps = pipeline.scheduler.timesteps
        run = pipeline.num_timesteps
        index = len(timesteps) - run + step
        if 0 <= index < len(timesteps) - 1 and (step + 1) < self.until * run:
            held = pipeline.scheduler.add_noise(self.latents, self.noise, timesteps[index + 1:index + 2])
            current = tensors["latents"]
            tensors["latents"] = self.mask * held.to(current.dtype) + (1 - self.mask) * current
        return tensors


class FlowMatchBlendCallback(LatentBlendCallback):
    """``LatentBlendCallback`` for flow-matching pipelines with packed latents (Flux): the warped frame's packed
    latents are noised to the schedule's next sigma, ``sigma * noise + (1 - sigma) * latents``, the forward
    process of flow matching (add_noise's counterpart). ``mask`` is one value per token."""

    def __call__(self, pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        scheduler = pipeline.scheduler
        index = scheduler.step_index  # already moved past this step: the sigma the latents now have
        if index is not None and index < len(scheduler.sigmas) - 1 and (step + 1) < self.until * pipeline.num_timesteps:
            current = tensors["latents"]
            sigma = scheduler.sigmas[index].to(device=current.device, dtype=current.dtype)
            held = sigma * self.noise + (1 - sigma) * self.latents
            tensors["latents"] = self.mask * held.to(current.dtype) + (1 - self.mask) * current
        return tensors
