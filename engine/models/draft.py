"""The draft tier (issue 15): a few-step distilled path through the same run functions as the final tier.

A draft job is a final job with three things swapped for its length, on the pipeline already
loaded (its ControlNets kept):
- a distillation LoRA (LCM-LoRA or TCD LoRA) loaded as a named adapter, the way character LoRAs
  are (``identity.load_lora_adapter``), and deleted afterwards, so the next final job runs the
  UNet exactly as loaded;
- the scheduler: ``LCMScheduler`` or ``TCDScheduler`` built from the loaded scheduler's config;
- optionally the VAE: a tiny one (diffusers ``AutoencoderTiny``, TAESD-class, safetensors).
Steps and guidance are the draft's (``draft_request``); the frame keys gain the draft settings
(``cache_inputs``), while final jobs' keys do not change. Worker thread unless said otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contract.errors import BadRequest
from ..contract.schema import DraftSpec, JobRequest
from .refs import HUB_ID_RE, PICKLE_SUFFIXES, ModelRef, Progress, load_with_fallback, resolve_ref

logger = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"
# The distillation LoRA made for each (base family, scheduler).
DEFAULT_LORAS = {
    ("sd15", "LCM"): "latent-consistency/lcm-lora-sdv1-5",
    ("sdxl", "LCM"): "latent-consistency/lcm-lora-sdxl",
    ("sd15", "TCD"): "h1t/TCD-SD15-LoRA",
    ("sdxl", "TCD"): "h1t/TCD-SDXL-LoRA",
}
DEFAULT_TINY_VAES = {"sd15": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}


def draft_request(request: JobRequest) -> JobRequest:
    """The request as it runs: the draft's steps and guidance replace the job's and the frames'. HTTP thread."""
    if request.tier != "draft":
        return request
    draft = request.draft
    frames = [f.model_copy(update={"guidance_scale": None}) if f.guidance_scale is not None else f
              for f in request.frames]
    return request.model_copy(update={"steps": draft.steps, "guidance_scale": draft.guidance_scale,
                                      "frames": frames})


def resolve_lora(value: str) -> ModelRef:
    """A draft LoRA reference: a local .safetensors file, or a Hub file. Raises a 400 naming ``draft.lora``.

    ``<owner>/<repo>`` means the repository's ``pytorch_lora_weights.safetensors`` (the layout of
    latent-consistency/lcm-lora-* and h1t/TCD-*); ``<owner>/<repo>/<path>.safetensors`` names the file.
    """
    text = value.strip()
    path = Path(os.path.expanduser(text))
    parts = text.strip("/").split("/")
    if path.is_dir() and (path / LORA_FILE).is_file():  # a downloaded repository folder
        text, path = str(path / LORA_FILE), path / LORA_FILE
    if (path.exists() or path.suffix.lower() in PICKLE_SUFFIXES or path.is_absolute() or text.startswith((".", "~"))
            or (path.suffix.lower() == ".safetensors" and len(parts) < 3)):
        return resolve_ref(text, "draft.lora", "lora")  # pickles refused, allow-list, "not usable"
    if len(parts) == 2 and HUB_ID_RE.match(text):
        text = f"{text}/{LORA_FILE}"
    elif len(parts) < 3 or not text.lower().endswith(".safetensors") or not HUB_ID_RE.match("/".join(parts[:2])):
        raise BadRequest(f"draft.lora: '{value}' is neither a .safetensors file on the engine machine nor a Hub "
                         f"LoRA ('<owner>/<repo>' or '<owner>/<repo>/<path>.safetensors'), e.g. "
                         f"'{DEFAULT_LORAS[('sd15', 'LCM')]}'", field="draft.lora", code="model_unavailable")
    resolve_ref("/".join(text.split("/")[:2]), "draft.lora", "base")  # the allow-list of a shared engine
    return ModelRef("hub", text, "draft.lora")


def resolve_tiny_vae(value: str) -> ModelRef:
    """A tiny VAE: a local diffusers AutoencoderTiny folder or a Hub id. Raises a 400 naming the field."""
    return resolve_ref(value, "draft.tiny_vae_model", "controlnet")


def check_draft(request: JobRequest) -> None:
    """Submit-time checks of the draft references that do not need the base model's family. HTTP thread."""
    if request.tier != "draft":
        return
    if request.draft.lora:
        resolve_lora(request.draft.lora)
    if request.draft.tiny_vae and request.draft.tiny_vae_model:
        resolve_tiny_vae(request.draft.tiny_vae_model)


def cache_inputs(request: JobRequest) -> dict[str, Any]:
    """What a draft frame depends on beyond a final frame's inputs (part of its cache key).

    Without an explicit reference the LoRA and the tiny VAE are the base family's defaults,
    and the base model is in the key already.
    """
    draft = request.draft
    lora = resolve_lora(draft.lora).identity() if draft.lora else "default"
    vae: str | None = None
    if draft.tiny_vae:
        vae = resolve_tiny_vae(draft.tiny_vae_model).identity() if draft.tiny_vae_model else "default"
    return {"tier": "draft", "scheduler": draft.scheduler, "lora": lora, "lora_scale": draft.lora_scale,
            "tiny_vae": vae}


def lora_file(ref: ModelRef, progress: Progress) -> str:
    """The local path of the LoRA file: a Hub file comes from the cache (downloaded when allowed)."""
    if ref.kind != "hub":
        return ref.value
    from huggingface_hub import hf_hub_download

    parts = ref.value.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    return load_with_fallback(
        ref, lambda offline: hf_hub_download(repo, filename, local_files_only=offline), progress)


def load_tiny_vae(ref: ModelRef, dtype: Any, progress: Progress) -> Any:
    from diffusers import AutoencoderTiny

    progress("loading", {"model": ref.value})
    return load_with_fallback(ref, lambda offline: AutoencoderTiny.from_pretrained(
        ref.value, torch_dtype=dtype, use_safetensors=True, local_files_only=offline), progress)


def _pipelines(models: Any) -> list[Any]:
    return [models.base, *models.variants.values(), *models.img2img_variants.values()]


@dataclass
class DraftTier:
    """The swaps of one draft job; ``release`` undoes them whatever happened."""

    spec: DraftSpec
    adapter: str = ""
    adapter_scale: float = 1.0
    saved: dict[str, Any] = field(default_factory=dict)

    @property
    def adapters(self) -> list[tuple[str, float]]:
        """The adapters a job's other LoRAs (characters) must keep active beside their own."""
        return [(self.adapter, self.adapter_scale)] if self.adapter else []

    @classmethod
    def enter(cls, request: JobRequest, models: Any, job: Any) -> DraftTier:
        """Load the LoRA, swap the scheduler and (if asked) the VAE on every pipeline variant.

        ``job`` (engine/jobs.Job) shows the loading and downloading in its phase and detail.
        """
        from diffusers import LCMScheduler, TCDScheduler

        from ..characters.identity import load_lora_adapter

        def progress(phase: str, detail: dict[str, Any]) -> None:
            job.phase, job.detail = phase, detail

        tier = cls(request.draft)
        spec, base, family = request.draft, models.base, models.family
        # 1. The distillation LoRA, as a named adapter (a 400 when made for another family).
        ref = resolve_lora(spec.lora or DEFAULT_LORAS[(family, spec.scheduler)])
        local = ModelRef("file", lora_file(ref, progress), ref.field, ref.fingerprint)
        name = "vf_draft_" + hashlib.sha256(ref.identity().encode()).hexdigest()[:12]
        progress("loading", {"model": ref.value})
        label = "draft.lora: the draft LoRA" + (f" from {ref.value}" if ref.kind == "hub" else "")
        load_lora_adapter(base, family, local, name, label, "draft.lora")
        tier.adapter, tier.adapter_scale = name, spec.lora_scale
        try:
            base.set_adapters([name], [spec.lora_scale])
            # 2. The tiny VAE, loaded once per pipeline and kept beside it.
            vae = None
            if spec.tiny_vae:
                vae_ref = resolve_tiny_vae(spec.tiny_vae_model or DEFAULT_TINY_VAES[family])
                cache = models.extras.setdefault("tiny_vaes", {})
                if vae_ref.identity() not in cache:
                    import torch

                    loaded = load_tiny_vae(vae_ref, getattr(torch, models.key.dtype), progress)
                    cache[vae_ref.identity()] = loaded.to(models.key.device)
                vae = cache[vae_ref.identity()]
            # 3. The scheduler from the loaded one's config; variants made later copy the base's.
            scheduler_cls = LCMScheduler if spec.scheduler == "LCM" else TCDScheduler
            tier.saved = {"scheduler": base.scheduler, "vae": base.vae}
            scheduler = scheduler_cls.from_config(base.scheduler.config)
            for pipe in _pipelines(models):
                pipe.scheduler = scheduler
                if vae is not None:
                    pipe.vae = vae
        except BaseException:
            tier.release(models)
            raise
        logger.info("Draft tier: %s, %s, %d steps, guidance %.2f, tiny VAE %s", ref.value, spec.scheduler,
                    spec.steps, spec.guidance_scale, spec.tiny_vae)
        return tier

    def release(self, models: Any) -> None:
        """Scheduler and VAE back on every variant (those made during the job too), the LoRA deleted."""
        if self.saved:
            for pipe in _pipelines(models):
                pipe.scheduler = self.saved["scheduler"]
                pipe.vae = self.saved["vae"]
            self.saved = {}
        if self.adapter:
            models.base.delete_adapters([self.adapter])
            self.adapter = ""
