"""Where models come from and how they are loaded: one code path for tiny and real ones.

A model reference is a Hugging Face Hub id, a local diffusers folder, or a single
``.safetensors`` file. Pickle-based weights (``.ckpt``, ``.bin``, ``.pt``) are refused:
unpickling runs arbitrary code from a file downloaded off a model site. Every loader
passes ``use_safetensors=True`` so diffusers and transformers never fall back to pickle.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import BadRequest, EngineFault, ModelUnavailable, is_out_of_memory

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = {".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle"}
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

Progress = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference; ``field`` is the request field it came from."""

    kind: Literal["hub", "folder", "file"]
    value: str
    field: str
    fingerprint: str = ""

    def identity(self) -> str:
        """What the cache key and the pipeline key see: changes when the weights change."""
        return f"{self.kind}:{self.value}:{self.fingerprint}"


def _fingerprint(path: Path) -> str:
    """Size and mtime of the weight/config files: a rewritten model gets a new identity."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = sorted((str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns)
                   for p in files)
    return _stable_hash(stats)


def _stable_hash(value: object) -> str:
    import hashlib

    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def resolve_ref(value: str, field: str, role: Literal["base", "controlnet", "lora"]) -> ModelRef:
    """Classify ``value`` as a Hub id, folder or file; raise a 4xx error naming ``field``.

    Runs on the HTTP thread at submit time, so mistakes are reported before queuing.
    """
    text = value.strip()
    path = Path(os.path.expanduser(text))
    suffix = path.suffix.lower()
    # 1. Pickle formats: refused whether or not the file exists.
    if suffix in PICKLE_SUFFIXES:
        raise BadRequest(
            f"{field}: '{value}' is a pickle-based {suffix} file, which the engine refuses to load "
            "because unpickling can run code hidden in the file. Use a .safetensors version of the "
            "model (most model sites offer one) or a diffusers folder.",
            field=field, code="unsafe_model_format",
        )
    # 2. Something on disk.
    if path.exists():
        if path.is_file():
            if suffix != ".safetensors":
                raise BadRequest(f"{field}: '{value}' is a file but not a .safetensors checkpoint", field=field)
            return ModelRef("file", str(path.resolve()), field, _fingerprint(path))
        if role == "lora":
            raise BadRequest(f"{field}: a LoRA must be a .safetensors file, '{value}' is a folder", field=field)
        marker = "model_index.json" if role == "base" else "config.json"
        if not (path / marker).is_file():
            raise BadRequest(
                f"{field}: folder '{value}' has no {marker}, so it is not a diffusers "
                f"{'pipeline' if role == 'base' else 'ControlNet'} folder",
                field=field,
            )
        return ModelRef("folder", str(path.resolve()), field, _fingerprint(path))
    # 3. A path that does not exist (absolute, relative with ./, ~, a file suffix).
    looks_like_path = (
        path.is_absolute() or text.startswith((".", "~")) or "\\" in text or suffix == ".safetensors"
        or text.count("/") > 1 or role == "lora"
    )
    if looks_like_path or not HUB_ID_RE.match(text):
        raise ModelUnavailable(
            f"{field}: '{value}' does not exist on the engine machine. Give an existing local "
            "diffusers folder, a .safetensors file, or a Hugging Face Hub id like 'owner/name'.",
            field=field,
        )
    return ModelRef("hub", text, field)


# Loading (worker thread) ---------------------------------------------------------


def _hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _repo_bytes(repo_id: str) -> int:
    folder = _hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    if not folder.exists():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


class _DownloadWatcher:
    """Reports the bytes of a Hub repo in the local cache while it downloads.

    diffusers' ``from_pretrained`` takes no progress callback, so the engine watches
    the Hugging Face cache folder instead: crude, but it works for every file layout.
    """

    def __init__(self, repo_id: str, progress: Progress) -> None:
        self.repo_id = repo_id
        self.progress = progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vf-download-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.progress("downloading", {"model": self.repo_id, "downloaded_bytes": _repo_bytes(self.repo_id)})

    def __enter__(self) -> _DownloadWatcher:
        self.progress("downloading", {"model": self.repo_id, "downloaded_bytes": _repo_bytes(self.repo_id)})
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def _unavailable(ref: ModelRef, exc: BaseException) -> ModelUnavailable:
    reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if ref.kind == "hub":
        how = (
            f"It is not in the Hugging Face cache ({_hub_cache_dir()}) and could not be downloaded. "
            f"Check the id on https://huggingface.co/{ref.value}, connect the engine machine to the "
            f"internet once (or run `hf download {ref.value}` there), or give a local folder instead."
        )
    else:
        how = "Check that the file or folder is a complete, uncorrupted diffusers model."
    return ModelUnavailable(f"{ref.field}: could not load '{ref.value}'. {how} ({reason})", field=ref.field)


def load_with_fallback(ref: ModelRef, load: Callable[[bool], Any], progress: Progress) -> Any:
    """Call ``load(local_files_only)`` offline first, then online while watching the download.

    The first try needs no network, so a cached model starts fast and works offline;
    only a miss reaches the Hub.
    """
    try:
        return load(True)
    except Exception as exc:  # noqa: BLE001 - classified below, re-raised as a user message
        if is_out_of_memory(exc) or isinstance(exc, EngineFault):
            raise
        if ref.kind != "hub" or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True"):
            raise _unavailable(ref, exc) from exc
        logger.info("%s '%s' is not cached (%s); downloading", ref.field, ref.value, exc)
    try:
        with _DownloadWatcher(ref.value, progress):
            return load(False)
    except Exception as exc:  # noqa: BLE001
        if is_out_of_memory(exc) or isinstance(exc, EngineFault):
            raise
        raise _unavailable(ref, exc) from exc


def detect_family(ref: ModelRef, progress: Progress) -> Literal["sd15", "sdxl"]:
    """SD 1.5 or SDXL, from model_index.json or from the keys of a single-file checkpoint."""
    if ref.kind == "file":
        from safetensors import safe_open

        with safe_open(ref.value, framework="pt") as f:
            keys = f.keys()
            return "sdxl" if any(k.startswith("conditioner.embedders.1") for k in keys) else "sd15"
    from diffusers import DiffusionPipeline

    config = load_with_fallback(
        ref, lambda offline: DiffusionPipeline.load_config(ref.value, local_files_only=offline), progress
    )
    return "sdxl" if "XL" in str(config.get("_class_name", "")) else "sd15"


def load_base(ref: ModelRef, dtype: torch.dtype, progress: Progress) -> tuple[Any, str]:
    """Load the base text-to-image pipeline; returns (pipeline, family). Worker thread."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    family = detect_family(ref, progress)
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    # No safety checker: previs frames are for the director, and the checker both
    # blacks out frames at random on blocking shots and costs a second model load.
    extra: dict[str, Any] = {} if family == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    progress("loading", {"model": ref.value})
    if ref.kind == "file":
        pipe = load_with_fallback(
            ref, lambda offline: cls.from_single_file(ref.value, dtype=dtype, local_files_only=offline, **extra),
            progress,
        )
    else:
        pipe = load_with_fallback(
            ref, lambda offline: cls.from_pretrained(
                ref.value, dtype=dtype, use_safetensors=True, local_files_only=offline, **extra
            ),
            progress,
        )
    return pipe, family


def load_controlnet(ref: ModelRef, dtype: torch.dtype, cross_attention_dim: int, progress: Progress) -> Any:
    """Load one ControlNet and check it fits the base UNet. Worker thread."""
    from diffusers import ControlNetModel

    progress("loading", {"model": ref.value})
    if ref.kind == "file":
        net = load_with_fallback(
            ref, lambda offline: ControlNetModel.from_single_file(ref.value, dtype=dtype,
                                                                  local_files_only=offline), progress)
    else:
        net = load_with_fallback(
            ref, lambda offline: ControlNetModel.from_pretrained(
                ref.value, dtype=dtype, use_safetensors=True, local_files_only=offline), progress)
    if net.config.cross_attention_dim != cross_attention_dim:
        raise BadRequest(
            f"{ref.field}: ControlNet '{ref.value}' was trained for a base model with "
            f"cross_attention_dim={net.config.cross_attention_dim}, but the base model has "
            f"{cross_attention_dim} (SD 1.5 is 768, SDXL 2048). Pick a ControlNet made for the base "
            "model's family.", field=ref.field, code="incompatible_model",
        )
    return net


def load_lora(pipe: Any, ref: ModelRef, scale: float) -> None:
    """Fuse a LoRA into ``pipe`` at ``scale``. The pipeline key includes the LoRA, so a
    fused pipeline is never reused for a request with another LoRA. Worker thread."""
    try:
        pipe.load_lora_weights(ref.value, adapter_name="viewfinder")
        pipe.fuse_lora(lora_scale=scale, adapter_names=["viewfinder"])
        # Keep the fused weights, drop the adapter layers: character LoRAs (engine/identity.py)
        # are mixed per job with set_adapters, which would otherwise unmerge this one.
        pipe.unload_lora_weights()
    except Exception as exc:  # noqa: BLE001
        if is_out_of_memory(exc):
            raise
        raise BadRequest(
            f"{ref.field}: could not apply LoRA '{ref.value}' ({str(exc).splitlines()[0][:200]}). "
            "Check that it was trained for this base model's family.", field=ref.field,
            code="incompatible_model",
        ) from exc
