"""The VIDEO generator's part of a shot's engine job: which generator, which video model, references.

Main thread (reads bpy properties), but no bpy import: plain attribute reads, so the
functions are testable with simple namespaces.

Reference images: today a shot's own ``reference_image``. The engine field is generic
(``video.references``: uploaded image blobs), so the character bible can add its
characters' images here when it lands.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..generate.shot import GenerationError
from ..hashing import file_sha256
from .request import DEFAULT_VIDEO_MODEL

log = logging.getLogger(__name__)

# Preset → (engine pipeline, model id). ANIMATEDIFF uses the scene's SD 1.5 model and ControlNets.
VIDEO_MODELS: dict[str, tuple[str, str]] = {
    "WAN21_VACE_1_3B": ("WAN_VACE", DEFAULT_VIDEO_MODEL),
    "WAN21_VACE_14B": ("WAN_VACE", "Wan-AI/Wan2.1-VACE-14B-diffusers"),
    "WAN22_VACE_14B": ("WAN_VACE", "linoyts/Wan2.2-VACE-Fun-14B-diffusers"),
    "ANIMATEDIFF": ("ANIMATEDIFF", ""),
}
# AnimateDiff: diffusers' sliding 16-frame contexts cover a window; windows of 48 keep memory modest.
ANIMATEDIFF_WINDOW = 48


def effective_generator(settings: Any, shot: Any) -> str:
    """'IMAGE' or 'VIDEO': the shot's own choice, or the scene's where the shot says DEFAULT."""
    choice = getattr(shot, "generator", "DEFAULT")
    return str(settings.generator) if choice == "DEFAULT" else str(choice)


def _abspath(value: str) -> str:
    if value.startswith("//"):
        import bpy  # deferred: importable without Blender

        return bpy.path.abspath(value)
    return value


def reference_path(shot: Any) -> Path | None:
    """The shot's reference image as an absolute path, or None; a missing file is an error naming it."""
    value = getattr(shot, "reference_image", "")
    if not value:
        return None
    path = Path(_abspath(value))
    if not path.is_file():
        raise GenerationError(f"Shot '{shot.name}': Reference Image '{value}' does not exist; pick an image file "
                              "or clear the field")
    return path


def reference_uploads(shot: Any) -> list[Path]:
    path = reference_path(shot)
    return [path] if path is not None else []


def video_settings(settings: Any, shot: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """The request fields of a VIDEO job: ``generator``, ``video`` and the depth range for seam blending."""
    preset = str(settings.video_model_preset)
    if preset == "CUSTOM":
        model = _abspath(settings.video_model.strip())
        if not model:
            raise GenerationError(f"Shot '{shot.name}': Video Model is Custom but Custom Video Model is empty; "
                                  "give a Wan VACE folder or Hugging Face id (Viewfinder ▸ Film)")
        pipeline = "WAN_VACE"
    else:
        pipeline, model = VIDEO_MODELS[preset]
    video: dict[str, Any] = {
        "pipeline": pipeline,
        "control": str(settings.video_control),
        "conditioning_scale": round(float(shot.depth_weight), 4),
        "window": int(settings.video_window),
        "overlap": int(settings.video_overlap),
    }
    if pipeline == "WAN_VACE":
        video["model"] = model
    else:
        video["motion_adapter"] = _abspath(settings.motion_adapter.strip())
        video["window"] = min(int(settings.video_window), ANIMATEDIFF_WINDOW)
    path = reference_path(shot)
    if path is not None:
        video["references"] = [file_sha256(path)]
    coherence: dict[str, Any] = {"mode": "INDEPENDENT"}
    if meta.get("near") is not None and meta.get("far") is not None:
        coherence["depth_range"] = [float(meta["near"]), float(meta["far"])]
    return {"generator": "VIDEO", "video": video, "coherence": coherence}
