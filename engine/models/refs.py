"""Where models come from: a reference resolved on the HTTP thread, fetched (offline first) on the worker.

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
from typing import Any, Literal

from ..contract.errors import BadRequest, EngineFault, ModelUnavailable, is_out_of_memory

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
    # A single-file base model's config folder (engine/models/loaders.py ``single_file_config``) and, when the
    # request named it (``models.base_config``), its fingerprint; the family's reference repository from the
    # Hugging Face cache is the one diffusers always used, so it leaves the identity as it was.
    config: str = ""
    config_print: str = ""

    def identity(self) -> str:
        """What the cache key and the pipeline key see: changes when the weights change."""
        own = f"{self.kind}:{self.value}:{self.fingerprint}"
        return f"{own}|config:{self.config}:{self.config_print}" if self.config_print else own


def fingerprint(path: Path) -> str:
    """Size and mtime of the weight/config files: a rewritten model gets a new identity."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = sorted((str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns)
                   for p in files)
    return _stable_hash(stats)


def _stable_hash(value: object) -> str:
    import hashlib

    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


# Policy: which models this engine may load (``serve --allow-models``, ``--no-hub``) ----------

_allowed: set[str] | None = None
_hub = True
ALLOWED_LIBRARIES = {"diffusers", "transformers", None}


def set_policy(allowed: set[str] | None = None, hub: bool = True) -> None:
    """Pin the models a (shared) engine may load, and whether it may reach the Hub."""
    global _allowed, _hub
    _allowed = None if allowed is None else {_normalize(a) for a in allowed}
    _hub = hub


def read_allow_list(path: str) -> set[str]:
    """One Hub id or path per line; '#' starts a comment."""
    entries = {line.split("#", 1)[0].strip() for line in Path(path).read_text("utf-8").splitlines()}
    entries.discard("")
    if not entries:
        raise ValueError(f"{path} lists no models")
    return entries


def _normalize(value: str) -> str:
    text = value.strip()
    if HUB_ID_RE.match(text) and not os.path.exists(os.path.expanduser(text)):
        return text
    return str(Path(os.path.expanduser(text)).resolve())


def _not_usable(value: str, field: str) -> ModelUnavailable:
    """One message for every path that cannot be used, so an answer never tells a client
    whether a path exists on the engine machine, or what it is."""
    return ModelUnavailable(
        f"{field}: '{shown(value)}' is not a usable model on the engine machine. Give a local diffusers folder, a "
        ".safetensors file, or a Hugging Face Hub id like 'owner/name'.", field=field,
    )


not_usable = _not_usable  # the same words for the other model fields (IP-Adapter, encoder, upscaler)

MAX_MODEL_REF_CHARS = 1024


def shown(value: str, most: int = 120) -> str:
    """A client's model reference as an answer or a log line quotes it: bounded."""
    return value if len(value) <= most else f"{value[:most]}… ({len(value)} characters)"


def check_allowed(value: str, field: str) -> None:
    """The shared engine's --allow-models list, for every field that names weights to load
    (models.*, models.ip_adapter, models.image_encoder, finalize.upscaler); 403 before the
    disk is looked at, so the answer says nothing of what exists there."""
    if len(value) > MAX_MODEL_REF_CHARS or any(len(part) > 255 for part in value.split("/")):
        raise _not_usable(value, field)  # no file system takes it: refused before one is asked
    if _allowed is not None and _normalize(value.strip()) not in _allowed:
        raise EngineFault(f"{field}: '{shown(value)}' is not one of the models this engine allows (its "
                          "--allow-models list); ask whoever runs the engine", code="model_not_allowed", status=403,
                          field=field)


def _ships_code(path: Path) -> str | None:
    """Why a model folder would run code of its own when loaded, or None.

    diffusers can import a custom pipeline or component named in model_index.json, and
    transformers code listed under ``auto_map``; the pinned versions refuse most of it
    by default, but the engine refuses such a folder itself, whatever the versions.
    """
    import json

    for file in path.rglob("*"):
        if file.suffix.lower() in (".py", ".pyc", ".so", ".pyd") and file.is_file():
            return f"it ships code ({file.name})"
    for config in [path / "model_index.json", *path.rglob("config.json")]:
        try:
            data = json.loads(config.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        if "custom_pipeline" in data or "auto_map" in data:
            return f"{config.name} names custom code"
        if config.name == "model_index.json":
            for value in data.values():
                if isinstance(value, list) and len(value) == 2 and value[0] not in ALLOWED_LIBRARIES:
                    return f"model_index.json loads a component from '{value[0]}'"
    return None


def resolve_ref(value: str, field: str, role: Literal["base", "controlnet", "lora"]) -> ModelRef:
    """Classify ``value`` as a Hub id, folder or file; raise a 4xx error naming ``field``.

    Runs on the HTTP thread at submit time, so mistakes are reported before queuing.
    """
    text = value.strip()
    if len(text) > MAX_MODEL_REF_CHARS or any(len(part) > 255 for part in text.split("/")):
        raise _not_usable(value, field)  # no file system takes it: refused before one is asked
    path = Path(os.path.expanduser(text))
    suffix = path.suffix.lower()
    # 1. Pickle formats: refused whether or not the file exists.
    if suffix in PICKLE_SUFFIXES:
        raise BadRequest(
            f"{field}: '{shown(value)}' is a pickle-based {suffix} file, which the engine refuses to load "
            "because unpickling can run code hidden in the file. Use a .safetensors version of the "
            "model (most model sites offer one) or a diffusers folder.",
            field=field, code="unsafe_model_format",
        )
    # 2. The allow-list of a shared engine, before anything looks at the disk.
    if _allowed is not None and _normalize(text) not in _allowed:
        raise EngineFault(f"{field}: '{shown(value)}' is not one of the models this engine allows (its "
                          "--allow-models list); ask whoever runs the engine", code="model_not_allowed", status=403,
                          field=field)
    # 3. Something on disk. Every refusal reads the same, whatever is (or is not) there.
    if path.exists():
        if path.is_file():
            if suffix != ".safetensors":
                raise _not_usable(value, field)
            return ModelRef("file", str(path.resolve()), field, fingerprint(path))
        marker = "model_index.json" if role == "base" else "config.json"
        if role == "lora" or not (path / marker).is_file():
            raise _not_usable(value, field)
        code = _ships_code(path)
        if code is not None:
            raise BadRequest(f"{field}: '{value}' is refused because {code}; the engine loads only plain "
                             "diffusers folders with .safetensors weights", field=field, code="unsafe_model_code")
        return ModelRef("folder", str(path.resolve()), field, fingerprint(path))
    # 4. A path that does not exist (absolute, relative with ./, ~, a file suffix).
    looks_like_path = (
        path.is_absolute() or text.startswith((".", "~")) or "\\" in text or suffix == ".safetensors"
        or text.count("/") > 1 or role == "lora"
    )
    if looks_like_path or not HUB_ID_RE.match(text):
        raise _not_usable(value, field)
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
        # "<owner>/<repo>/<path>" names one file of a repository (a LoRA, an IP-Adapter): say which.
        parts = ref.value.split("/")
        repo, file = "/".join(parts[:2]), "/".join(parts[2:])
        command = f"hf download {repo}" + (f" {file}" if file else "")
        how = (
            f"{f'Its file {file} is' if file else 'It is'} not in the Hugging Face cache ({_hub_cache_dir()}) and "
            f"could not be downloaded. Check the id on https://huggingface.co/{repo}, connect the engine machine "
            f"to the internet once (or run `{command}` there; older huggingface_hub: `huggingface-cli download "
            f"{command[len('hf download '):]}`), or give a local {'file' if file else 'folder'} instead."
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
        if ref.kind != "hub" or not _hub or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True"):
            raise _unavailable(ref, exc) from exc
        logger.info("%s '%s' is not cached (%s); downloading", ref.field, ref.value, exc)
    try:
        with _DownloadWatcher(ref.value, progress):
            return load(False)
    except Exception as exc:  # noqa: BLE001
        if is_out_of_memory(exc) or isinstance(exc, EngineFault):
            raise
        raise _unavailable(ref, exc) from exc
