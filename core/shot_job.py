"""The main-thread ends of generation: scene → `ShotJob`, and `TakeOutcome` → VSE.

Main thread only (reads and writes bpy data).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import vse
from .generate import GenerationError, ShotJob, TakeOutcome, build_maps
from .paths import Project, frame_name
from .resolution import generation_size
from .video_job import effective_generator, reference_uploads, video_settings

if TYPE_CHECKING:
    import bpy

    from .prefs import Prefs

log = logging.getLogger(__name__)

MIN_EDGE = 64  # the engine's smallest frame side (8 latent pixels)


def generation_settings(scene: bpy.types.Scene) -> tuple[int, int]:
    render = scene.render
    return generation_size(
        render.resolution_x, render.resolution_y, render.pixel_aspect_x, render.pixel_aspect_y,
        scene.viewfinder.long_edge,
    )


def collect_shot(
    scene: bpy.types.Scene,
    shot: Any,
    project: Project,
    prefs: Prefs,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> ShotJob:
    """Render (or reuse) the shot's control maps and describe its engine job."""
    from .conditioning import ConditioningError, render_shot  # deferred: heavier module

    if shot.problem:
        raise GenerationError(f"Shot '{shot.name}': {shot.problem}")
    settings = scene.viewfinder
    width, height = generation_settings(scene)
    if min(width, height) < MIN_EDGE:
        needed = next(
            edge for edge in range(settings.long_edge, 16 * MIN_EDGE * 8, 8)
            if min(generation_size(scene.render.resolution_x, scene.render.resolution_y, scene.render.pixel_aspect_x,
                                   scene.render.pixel_aspect_y, edge)) >= MIN_EDGE
        )
        raise GenerationError(
            f"Long Edge {settings.long_edge} gives {width}×{height} frames, but the models need at least "
            f"{MIN_EDGE} pixels on each side: set Long Edge to {needed} or more (Viewfinder ▸ Film)"
        )
    conditioning_dir = project.conditioning_dir(shot.name)
    try:
        render_shot(scene, shot, conditioning_dir, width=width, height=height, progress=progress, cancel=cancel)
    except ConditioningError as exc:
        raise GenerationError(str(exc)) from exc
    meta = json.loads((conditioning_dir / "meta.json").read_text("utf-8"))
    maps = build_maps(conditioning_dir, meta)
    missing = [f for f, m in maps.items() if m["depth"] is None or not Path(m["depth"]).is_file()]
    if missing:
        raise GenerationError(
            f"Shot '{shot.name}': depth maps are missing for frames {missing[:5]}: render its control maps again"
        )

    models = {
        "base": _model_path(settings.model),
        "controlnet_depth": _model_path(settings.controlnet_depth) or None,
        "controlnet_pose": _model_path(settings.controlnet_pose) or None,
        "lora": _model_path(settings.lora) or None,
        "lora_scale": round(float(settings.lora_scale), 4),
    }
    prompts = {
        "prompt": shot.prompt,
        "style_prompt": settings.style_prompt,
        "negative_prompt": shot.negative_prompt,
    }
    job_settings = {
        "seed": int(shot.seed),
        "steps": int(settings.steps),
        "guidance_scale": round(float(settings.guidance_scale), 4),
        "width": width,
        "height": height,
        "depth_weight": round(float(shot.depth_weight), 4),
        "pose_weight": round(float(shot.pose_weight), 4),
        "control_start": round(float(shot.control_start), 4),
        "control_end": round(float(shot.control_end), 4),
        "coherence": coherence_settings(shot, meta),
    }
    uploads: list[Path] = []
    # The character bible and film look (core/characters_scene.py): empty for a film without them.
    cast = _characters(scene, shot, conditioning_dir, meta, project)
    if effective_generator(settings, shot) == "VIDEO":
        job_settings.update(video_settings(settings, shot, meta))
        uploads = reference_uploads(shot)
        # A video model takes whole-frame reference images, not regions: the bible's references
        # stand in for the shot's own when it has none.
        bible = [sha for c in cast["settings"].get("characters", []) for sha in c.get("references", [])]
        if not uploads and bible:
            uploads = [cast["blobs"][sha] for sha in dict.fromkeys(bible)]
            job_settings["video"]["references"] = list(dict.fromkeys(bible))
        cast = {**cast, "models": {}, "settings": {}, "masks": False, "blobs": {}}
    models.update(cast["models"])
    job_settings.update(cast["settings"])
    if cast["masks"]:
        for frame, frame_maps in maps.items():
            frame_maps["mask"] = conditioning_dir / "masks" / frame_name(frame)
    request = {
        "shot": shot.name,
        "models": models,
        **prompts,
        **job_settings,
        "batch_size": int(settings.batch_size),
        "device": prefs.device,
        "attention_slicing": prefs.attention_slicing,
        "cpu_offload": prefs.cpu_offload,
    }
    frames = sorted(maps)
    animated = apply_animation(scene, shot, frames, request, prompts, job_settings)
    return ShotJob(
        shot=shot.name, frames=frames, conditioning_dir=conditioning_dir, takes_dir=project.takes_dir(shot.name),
        maps=maps, request=request, models=models, prompts=prompts, settings=job_settings, uploads=uploads,
        frame_values=animated.per_frame, warnings=animated.warnings,
        blobs=cast["blobs"], characters=cast["characters"],
    )


def apply_animation(scene: bpy.types.Scene, shot: Any, frames: list[int], request: dict[str, Any],
                    prompts: dict[str, Any], job_settings: dict[str, Any]) -> Any:
    """Sample the shot's animated settings and prompt keys into the request (core/anim_sample.py).

    Job-level values become the shot's first frame's; the take's identity (prompts and
    settings, hashed into take.json) gains the prompt keys and the per-frame values.
    """
    from .anim_sample import SampleError, sample_shot

    try:
        samples = sample_shot(scene, shot, frames)
    except SampleError as exc:
        raise GenerationError(str(exc)) from exc
    for name, value in samples.job_values.items():
        if name == "strength":
            job_settings["coherence"]["strength"] = value
        else:
            job_settings[name] = value
    request.update({k: v for k, v in job_settings.items() if k in request})
    if samples.prompt_keys:
        request["prompt_keys"] = prompts["prompt_keys"] = list(samples.prompt_keys)
    if samples.per_frame:
        job_settings["per_frame"] = {str(f): v for f, v in sorted(samples.per_frame.items())}
    return samples


def _characters(scene: bpy.types.Scene, shot: Any, conditioning_dir: Path, meta: dict[str, Any],
                project: Project) -> dict[str, Any]:
    from .characters_scene import collect_characters

    try:
        return collect_characters(scene, conditioning_dir, meta, project.root / "references")
    except ValueError as exc:  # CharacterError: names the character and the fix
        text = str(exc)
        raise GenerationError(text if text.startswith(f"Shot '{shot.name}'") else f"Shot '{shot.name}': {text}") from exc


def coherence_settings(shot: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """The engine's coherence block; FLOW gets the shot's depth range for its disocclusion check."""
    if shot.coherence != "FLOW":
        return {"mode": "INDEPENDENT"}
    settings: dict[str, Any] = {
        "mode": "FLOW",
        "strength": round(float(shot.flow_strength), 4),
        "keyframe_interval": int(shot.keyframe_interval),
    }
    if meta.get("near") is not None and meta.get("far") is not None:
        settings["depth_range"] = [float(meta["near"]), float(meta["far"])]
    return settings


def _model_path(value: str) -> str:
    """Hub ids pass through; Blender-relative paths (//...) become absolute for the engine."""
    if not value:
        return ""
    if value.startswith("//"):
        import bpy  # deferred: importable without Blender

        return bpy.path.abspath(value)
    return value


def place_outcome(scene: bpy.types.Scene, outcome: TakeOutcome) -> Any:
    """Put a finished take on the VSE; a reused take only gets a strip if it has none."""
    if not outcome.complete or outcome.take_dir is None or outcome.info is None:
        return None
    info = outcome.info
    take_dir_text = str(outcome.take_dir)
    existing = [s for s in vse.strips_of_shot(scene, outcome.shot) if s.get(vse.TAKE_KEY) == take_dir_text]
    if existing:
        return existing[0]
    frames = sorted(info.frames_total)
    return vse.add_take_strip(
        scene, shot_name=outcome.shot, take_label=info.take, take_dir=outcome.take_dir,
        frames=frames, file_names=[frame_name(f) for f in frames],
    )
