"""The main-thread ends of generation: scene → `ShotJob`, and `TakeOutcome` → VSE.

Main thread only (reads and writes bpy data).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..timeline import vse
from .shot import GenerationError, ShotJob, TakeOutcome
from ..timeline.paths import Project, frame_name
from ..jobs.request import DraftSpec, JobRequest
from ..scene.resolution import MIN_EDGE, scene_size, smallest_long_edge
from ..timeline.takes import DRAFT, FINAL
from ..jobs.video import effective_generator, reference_uploads, video_settings

if TYPE_CHECKING:
    import bpy

    from ..prefs import Prefs

log = logging.getLogger(__name__)


def collect_shot(
    scene: bpy.types.Scene,
    shot: Any,
    project: Project,
    prefs: Prefs,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    tier: str | None = None,
) -> ShotJob:
    """Render (or reuse) the shot's control maps and describe its engine job.

    ``tier`` ("draft" or "final") overrides the shot's and the scene's tier setting.
    """
    from ..conditioning import ConditioningError, render_shot  # deferred: heavier module

    if shot.problem:
        raise GenerationError(f"Shot '{shot.name}': {shot.problem}")
    settings = scene.viewfinder
    width, height = scene_size(scene)
    if min(width, height) < MIN_EDGE:
        raise GenerationError(
            f"Long Edge {settings.long_edge} gives {width}×{height} frames, but the models need at least "
            f"{MIN_EDGE} pixels on each side: set Long Edge to {smallest_long_edge(scene)} or more (Viewfinder ▸ Film)"
        )
    # The generation tier (README "Drafts"); half-size drafts get their own maps beside the full-size ones.
    tier, tier_warnings = (tier, []) if tier else effective_tier(settings, shot)
    final_size = [width, height]
    if tier == DRAFT and settings.draft_half_size:
        width, height = half_size(width, height)
    conditioning_dir = project.conditioning_dir(shot.name)
    if [width, height] != final_size:
        conditioning_dir = project.shot_dir(shot.name) / f"conditioning-{width}x{height}"
    try:
        result = render_shot(scene, shot, conditioning_dir, width=width, height=height, progress=progress,
                             cancel=cancel)
    except ConditioningError as exc:
        raise GenerationError(str(exc)) from exc
    meta = result.meta
    maps = {frame: dict(files) for frame, files in result.maps.items()}
    missing = [f for f, m in maps.items() if m["depth"] is None or not Path(m["depth"]).is_file()]
    if missing:
        raise GenerationError(
            f"Shot '{shot.name}': depth maps are missing for frames {missing[:5]}: render its control maps again"
        )

    models = scene_models(settings)
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
    # The character bible and film look (core/scene/characters.py): empty for a film without them.
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
    frames = sorted(maps)
    animated = apply_animation(scene, shot, frames, prompts, job_settings)
    request = JobRequest.from_parts(shot.name, models, prompts, job_settings, batch_size=int(settings.batch_size),
                                    **prefs_fields(prefs))
    if tier == DRAFT:  # final takes keep the settings (and so the request hash) they always had
        block = draft_block(settings)
        request.tier, request.draft = DRAFT, DraftSpec(**block)
        job_settings.update(tier=DRAFT, draft={**block, "final_size": final_size})
    return ShotJob(
        shot=shot.name, frames=frames, conditioning_dir=conditioning_dir, takes_dir=project.takes_dir(shot.name),
        maps=maps, request=request, models=models, prompts=prompts, settings=job_settings, uploads=uploads,
        frame_values=animated.per_frame, warnings=[*tier_warnings, *animated.warnings],
        blobs=cast["blobs"], characters=cast["characters"], tier=tier,
    )


def effective_tier(settings: Any, shot: Any) -> tuple[str, list[str]]:
    """("draft" or "final", warnings): the shot's tier, or the scene's for Scene Default.

    The draft tier is a path of the Image generator: a Video shot runs at the final tier, with a warning.
    """
    tier = (settings.tier if shot.tier == "DEFAULT" else shot.tier).lower()
    if tier == DRAFT and effective_generator(settings, shot) == "VIDEO":
        return FINAL, [f"Shot '{shot.name}': the draft tier is for the Image generator; this Video shot is "
                       "generated at the final tier"]
    return tier, []


def half_size(width: int, height: int) -> tuple[int, int]:
    """Half of each side in multiples of 8, or the size itself where half would go below the models' minimum."""
    half = (width // 2 // 8 * 8, height // 2 // 8 * 8)
    return half if min(half) >= MIN_EDGE else (width, height)


def draft_block(settings: Any) -> dict[str, Any]:
    """The engine's ``draft`` request block (engine/schema.DraftSpec) from the scene's draft settings."""
    return {
        "scheduler": settings.draft_scheduler,
        "steps": int(settings.draft_steps),
        "guidance_scale": round(float(settings.draft_guidance), 4),
        "lora": _model_path(settings.draft_lora) or None,
        "tiny_vae": bool(settings.draft_tiny_vae),
        "tiny_vae_model": (_model_path(settings.draft_tiny_vae_model) or None) if settings.draft_tiny_vae else None,
    }


def apply_animation(scene: bpy.types.Scene, shot: Any, frames: list[int], prompts: dict[str, Any],
                    job_settings: dict[str, Any]) -> Any:
    """Sample the shot's animated settings and prompt keys into the job's parts (core/scene/anim_sample.py).

    Job-level values become the shot's first frame's; the take's identity (prompts and
    settings, hashed into take.json) gains the prompt keys and the per-frame values.
    """
    from ..scene.anim_sample import SampleError, sample_shot

    try:
        samples = sample_shot(scene, shot, frames)
    except SampleError as exc:
        raise GenerationError(str(exc)) from exc
    for name, value in samples.job_values.items():
        if name == "strength":
            job_settings["coherence"]["strength"] = value
        else:
            job_settings[name] = value
    if samples.prompt_keys:
        prompts["prompt_keys"] = list(samples.prompt_keys)
    if samples.per_frame:
        job_settings["per_frame"] = {str(f): v for f, v in sorted(samples.per_frame.items())}
    return samples


def _characters(scene: bpy.types.Scene, shot: Any, conditioning_dir: Path, meta: dict[str, Any],
                project: Project) -> dict[str, Any]:
    from ..scene.characters import collect_characters

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


def scene_models(settings: Any) -> dict[str, Any]:
    """The request's ``models`` from the film settings (take.json keeps the same dict)."""
    return {
        "base": _model_path(settings.model),
        "controlnet_depth": _model_path(settings.controlnet_depth) or None,
        "controlnet_pose": _model_path(settings.controlnet_pose) or None,
        "lora": _model_path(settings.lora) or None,
        "lora_scale": round(float(settings.lora_scale), 4),
    }


def prefs_fields(prefs: Prefs) -> dict[str, Any]:
    """The request fields the add-on preferences set: where and how the engine runs the job."""
    return {"device": prefs.device, "attention_slicing": prefs.attention_slicing, "cpu_offload": prefs.cpu_offload}


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
    strip = vse.add_take_strip(
        scene, shot_name=outcome.shot, take_label=info.take, take_dir=outcome.take_dir,
        frames=frames, file_names=[frame_name(f) for f in frames],
    )
    # A half-size draft is shown at the size its final will have.
    final_size = (info.settings.get("draft") or {}).get("final_size")
    if final_size and int(info.settings.get("width") or 0) and final_size[0] != info.settings["width"]:
        strip.transform.scale_x = strip.transform.scale_y = final_size[0] / int(info.settings["width"])
    return strip
