"""The main-thread ends of generation: scene → `ShotJob`, and `TakeOutcome` → VSE.

Main thread only (reads and writes bpy data).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..jobs.families import label, request_name, supports, why_not
from ..jobs.request import DraftSpec, JobRequest
from ..jobs.video import effective_generator, reference_uploads, video_settings
from ..scene.resolution import MIN_EDGE, scene_size, smallest_long_edge
from ..timeline import vse
from ..timeline.paths import Project, file_names, frame_name
from ..timeline.takes import DRAFT, FINAL
from .map_plan import plan_maps
from .shot import GenerationError, ShotJob, TakeOutcome

if TYPE_CHECKING:
    import bpy

    from ..prefs import Prefs
    from ..scene.characters import ShotCast
    from .map_plan import MapPlan

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
    settings = scene.viewfinder
    # 1. A shot the models can generate, at the scene's size.
    width, height = checked_size(scene, shot)
    # 2. The generation tier (docs/user-guide.md "Drafts"); half-size drafts get their own maps beside the full-size ones.
    tier, tier_warnings = (tier, []) if tier else effective_tier(settings, shot)
    final_size = [width, height]
    if tier == DRAFT and settings.draft_half_size:
        width, height = half_size(width, height)
    conditioning_dir = project.conditioning_dir(shot.name)
    if [width, height] != final_size:
        conditioning_dir = project.shot_dir(shot.name) / f"conditioning-{width}x{height}"
    # 3. Control maps, rendered or reused: normal, line art, seg as the shot asks (map_plan.py).
    nets = {kind: model_path(getattr(settings, f"controlnet_{kind}")) for kind in ("normal", "lineart", "seg")}
    video = effective_generator(settings, shot) == "VIDEO"
    family_parts = family_models(settings)
    plan = plan_maps(scene, shot, nets, video=video, family=request_name(settings),
                     union="controlnet_union" in family_parts)
    meta, maps, map_warnings = shot_maps(scene, shot, conditioning_dir, width, height, progress, cancel, plan)
    # 4. The request's parts, with the character bible and film look (core/scene/characters.py).
    models = {**scene_models(settings), **plan.models}
    prompts = {"prompt": shot.prompt, "style_prompt": settings.style_prompt, "negative_prompt": shot.negative_prompt}
    job_settings = shot_settings(settings, shot, width, height, meta, plan.sent)
    cast = _characters(scene, shot, conditioning_dir, meta, project, video)
    uploads: list[Path] = []
    if video:
        uploads, cast = video_parts(settings, shot, meta, cast, job_settings)
    models.update(cast.models)
    job_settings.update(cast.settings)
    if cast.masks:
        for frame, frame_maps in maps.items():
            frame_maps["mask"] = conditioning_dir / "masks" / frame_name(frame)
    # 5. Animated settings sampled per frame, then the typed request.
    frames = sorted(maps)
    animated = apply_animation(scene, shot, frames, prompts, job_settings, plan.sent)
    drop_unweighted(maps, plan.sent, job_settings, animated.per_frame)
    request = JobRequest.from_parts(shot.name, models, prompts, job_settings, batch_size=int(settings.batch_size),
                                    **prefs_fields(prefs))
    if tier == DRAFT:  # final takes keep the settings (and so the request hash) they always had
        block = draft_block(settings)
        request.tier, request.draft = DRAFT, DraftSpec(**block)
        job_settings.update(tier=DRAFT, draft={**block, "final_size": final_size})
    return ShotJob(
        shot=shot.name, frames=frames, conditioning_dir=conditioning_dir, takes_dir=project.takes_dir(shot.name),
        maps=maps, request=request, models=models, prompts=prompts, settings=job_settings, uploads=uploads,
        frame_values=animated.per_frame,
        warnings=[*tier_warnings, *plan.warnings, *map_warnings, *cast.warnings, *animated.warnings],
        blobs=cast.blobs, characters=cast.characters, tier=tier,
    )


def checked_size(scene: bpy.types.Scene, shot: Any) -> tuple[int, int]:
    """The scene's generation size, or GenerationError when the shot cannot be generated."""
    if shot.problem:
        raise GenerationError(f"Shot '{shot.name}': {shot.problem}")
    width, height = scene_size(scene)
    if min(width, height) < MIN_EDGE:
        raise GenerationError(
            f"Long Edge {scene.viewfinder.long_edge} gives {width}×{height} frames, but the models need at least "
            f"{MIN_EDGE} pixels on each side: set Long Edge to {smallest_long_edge(scene)} or more (Viewfinder ▸ Film)"
        )
    return width, height


def shot_maps(scene: bpy.types.Scene, shot: Any, conditioning_dir: Path, width: int, height: int,
              progress: Callable[[int, int], None] | None, cancel: Callable[[], bool] | None,
              plan: MapPlan | None = None) -> tuple[dict[str, Any], dict[int, dict[str, Any]], list[str]]:
    """(meta.json, per-frame map files, warnings) of the shot's control maps, rendered or reused.

    The files are those the engine gets: normal, line-art and seg maps only where `plan` sends them.
    The warnings are the render's (an object with no class, no geometry in view, a topology change, a rig
    without OpenPose bones), so Generate shows them as Render Control Maps does.
    """
    from ..conditioning import ConditioningError, render_shot  # deferred: heavier module

    try:
        result = render_shot(scene, shot, conditioning_dir, width=width, height=height, progress=progress,
                             cancel=cancel, maps=plan.options if plan is not None else None)
    except ConditioningError as exc:
        raise GenerationError(str(exc)) from exc
    sent = ("depth", "pose", "flow", *(plan.sent if plan is not None else ()))
    maps = {frame: {k: v for k, v in files.items() if k in sent} for frame, files in result.maps.items()}
    listed: dict[Path, set[str]] = {}  # one folder read, not a stat per frame

    def present(path: Any) -> bool:
        path = Path(path)
        if path.parent not in listed:
            listed[path.parent] = file_names(path.parent)
        return path.name in listed[path.parent]

    for kind in ("depth", *(plan.sent if plan is not None else ())):
        missing = [f for f, m in maps.items() if m.get(kind) is None or not present(m[kind])]
        if missing:
            raise GenerationError(
                f"Shot '{shot.name}': {kind} maps are missing for frames {missing[:5]}: render its control maps again"
            )
    return result.meta, maps, list(result.warnings)


def drop_unweighted(maps: dict[int, dict[str, Any]], sent: tuple[str, ...], job_settings: dict[str, Any],
                    per_frame: dict[int, dict[str, Any]]) -> None:
    """A sent map stays off the frames where its (animated) weight is 0: weight 0 is "not sent"."""
    for kind in sent:
        for frame, files in maps.items():
            weight = per_frame.get(frame, {}).get(f"{kind}_weight", job_settings.get(f"{kind}_weight", 1.0))
            if weight == 0.0:
                files[kind] = None


def shot_settings(settings: Any, shot: Any, width: int, height: int, meta: dict[str, Any],
                  sent: tuple[str, ...] = ()) -> dict[str, Any]:
    """The job's generation settings from the film and the shot (take.json keeps the same dict).

    The weights of normal, line art and seg are there only for the maps `sent` (map_plan.py).
    """
    extra = {f"{kind}_weight": round(float(getattr(shot, f"{kind}_weight")), 4) for kind in sent}
    return {
        "seed": int(shot.seed),
        "steps": int(settings.steps),
        "guidance_scale": round(float(settings.guidance_scale), 4),
        "width": width,
        "height": height,
        "depth_weight": round(float(shot.depth_weight), 4),
        "pose_weight": round(float(shot.pose_weight), 4),
        **extra,
        "control_start": round(float(shot.control_start), 4),
        "control_end": round(float(shot.control_end), 4),
        "coherence": coherence_settings(shot, meta),
    }


def video_parts(settings: Any, shot: Any, meta: dict[str, Any], cast: ShotCast,
                job_settings: dict[str, Any]) -> tuple[list[Path], ShotCast]:
    """A Video shot's video block and reference uploads; the cast keeps only its take.json summary.

    A video model takes whole-frame reference images, not regions: the bible's references stand
    in for the shot's own when it has none.
    """
    job_settings.update(video_settings(settings, shot, meta))
    uploads = reference_uploads(shot)
    bible = [sha for c in cast.settings.get("characters", []) for sha in c.get("references", [])]
    if not uploads and bible:
        uploads = [cast.blobs[sha] for sha in dict.fromkeys(bible)]
        job_settings["video"]["references"] = list(dict.fromkeys(bible))
    return uploads, replace(cast, settings={}, models={}, blobs={}, masks=False)


def effective_tier(settings: Any, shot: Any) -> tuple[str, list[str]]:
    """("draft" or "final", warnings): the shot's tier, or the scene's for Scene Default.

    The draft tier is a path of the Image generator: a Video shot runs at the final tier, with a warning;
    so does a shot on a model family without a draft tier (Flux.1), with the reason.
    """
    tier = (settings.tier if shot.tier == "DEFAULT" else shot.tier).lower()
    if tier == DRAFT and effective_generator(settings, shot) == "VIDEO":
        return FINAL, [f"Shot '{shot.name}': the draft tier is for the Image generator; this Video shot is "
                       "generated at the final tier"]
    family = request_name(settings)
    if tier == DRAFT and why_not(family, "draft"):
        return FINAL, [f"Shot '{shot.name}': {label(family)} has no draft tier ({why_not(family, 'draft')}); "
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
        "lora": model_path(settings.draft_lora) or None,
        "tiny_vae": bool(settings.draft_tiny_vae),
        "tiny_vae_model": (model_path(settings.draft_tiny_vae_model) or None) if settings.draft_tiny_vae else None,
    }


def apply_animation(scene: bpy.types.Scene, shot: Any, frames: list[int], prompts: dict[str, Any],
                    job_settings: dict[str, Any], maps: tuple[str, ...] = ()) -> Any:
    """Sample the shot's animated settings and prompt keys into the job's parts (core/scene/anim_sample.py).

    Job-level values become the shot's first frame's; the take's identity (prompts and
    settings, hashed into take.json) gains the prompt keys and the per-frame values.
    """
    from ..scene.anim_sample import SampleError, sample_shot

    try:
        samples = sample_shot(scene, shot, frames, maps)
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
                project: Project, video: bool) -> ShotCast:
    """The shot's cast; on the Image generator, without what its model family cannot take (Flux.1: regional
    characters and masked references), each left out with a warning saying why."""
    from ..scene.characters import cast_for_family, collect_characters

    try:
        cast = collect_characters(scene, conditioning_dir, meta, project.root / "references")
        return cast if video else cast_for_family(cast, request_name(scene.viewfinder), shot.name)
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
        "base": model_path(settings.model),
        "controlnet_depth": model_path(settings.controlnet_depth) or None,
        "controlnet_pose": model_path(settings.controlnet_pose) or None,
        "lora": model_path(settings.lora) or None,
        "lora_scale": round(float(settings.lora_scale), 4),
        **family_models(settings),
    }


def family_models(settings: Any) -> dict[str, Any]:
    """Issue 24: the model family, its union ControlNet and a single file's config folder, each only when it
    is not SD 1.5's default, so an SD 1.5 film's requests and take.json models stay exactly as they were."""
    family = request_name(settings)
    out: dict[str, Any] = {} if family == "sd15" else {"family": family}
    union = model_path(settings.controlnet_union)
    if union and supports(family, "union_controlnet"):
        out["controlnet_union"] = union
    config = model_path(settings.base_config)
    if config:
        out["base_config"] = config
    return out


def prefs_fields(prefs: Prefs) -> dict[str, Any]:
    """The request fields the add-on preferences set: where and how the engine runs the job."""
    return {"device": prefs.device, "attention_slicing": prefs.attention_slicing, "cpu_offload": prefs.cpu_offload}


def model_path(value: str) -> str:
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
    existing = vse.take_strip(scene, outcome.shot, info.take, outcome.take_dir)
    if existing is not None:
        return existing
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
