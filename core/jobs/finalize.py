"""Finalize Take: an approved take → a 2x/4x take at up to the scene's output size, marked final.

Main-thread ends (bpy): `collect_finalize` renders the control maps at the new size
(again where files were deleted) and describes the engine job as a `ShotJob`, which
`generate.run_shot` runs on any thread exactly like generation (upload by content, poll,
frames into a new take folder as they finish, cancel keeps them, the same request
resumes). `place_final` puts the final take above the approved one, scaled to fit the
scene. The engine side: engine/jobs/finalize.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..conditioning.manifest import build_maps
from ..generate.shot import GenerationError, ShotJob, TakeOutcome
from ..generate.shot_job import coherence_settings, model_path, prefs_fields
from ..timeline.paths import Project, frame_name
from ..timeline.takes import FINALIZED, TakeInfo, read_take, take_tier
from .request import CoherenceSpec, FinalizeSpec, JobRequest, ModelSpec

if TYPE_CHECKING:
    import bpy

    from ..prefs import Prefs

log = logging.getLogger(__name__)

FINALIZED_TIER = FINALIZED  # take.json "tier" and the strip's "viewfinder_tier" of a Finalize Take take
PICKLE_SUFFIXES = {".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle"}  # as the engine's models.PICKLE_SUFFIXES
FACTORS = (2, 4)
DETAIL_STRENGTH = 0.3


@dataclass
class FinalizePlan:
    job: ShotJob
    width: int
    height: int
    notes: list[str] = field(default_factory=list)  # capped size, re-rendered maps: said to the user


def final_size(width: int, height: int, factor: int, out_width: int, out_height: int) -> tuple[int, int, str]:
    """(width, height, note): ``factor`` times the take, capped to the output size, multiples of 8.

    The note is empty unless the size was capped. Raises GenerationError when the take is
    already at (or above) the output size.
    """
    if factor not in FACTORS:
        raise GenerationError(f"Finalize factor must be 2 or 4, got {factor}")
    scale = min(float(factor), out_width / width, out_height / height)
    if scale < 1.0 + 1e-6 or (int(width * scale) // 8 * 8 <= width):
        raise GenerationError(
            f"The take is {width}×{height}, already the scene's output size ({out_width}×{out_height}) or more: "
            "raise the output resolution (Output Properties ▸ Format) to finalize it larger")
    new_w = max(8, int(width * scale) // 8 * 8)
    new_h = max(8, int(height * scale) // 8 * 8)
    note = ""
    if scale < factor:
        note = (f"{factor}× of {width}×{height} would be {width * factor}×{height * factor}, above the scene's "
                f"output size {out_width}×{out_height}: capped at {new_w}×{new_h} ({scale:.2f}×)")
    return new_w, new_h, note


def output_size(scene: bpy.types.Scene) -> tuple[int, int]:
    render = scene.render
    return (int(render.resolution_x * render.resolution_percentage / 100),
            int(render.resolution_y * render.resolution_percentage / 100))


def _missing_maps(conditioning_dir: Path) -> list[int]:
    """Frames whose depth (or flow) file listed in meta.json is gone: deleted by hand or by a cleanup."""
    meta_path = conditioning_dir / "meta.json"
    if not meta_path.is_file():
        return []
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
    except ValueError:
        return []
    maps = build_maps(conditioning_dir, meta)
    frames = meta.get("frames") or []
    first = frames[0] if frames else None
    return [f for f, m in maps.items()
            if m["depth"] is None or not Path(m["depth"]).is_file() or (f != first and m["flow"] is None)]


def check_upscaler(upscaler: str) -> None:
    """A .safetensors upscaler or none: the engine refuses pickles (unpickling can run code)."""
    suffix = Path(upscaler).suffix.lower() if upscaler else ""
    if suffix and suffix != ".safetensors":
        kind = "a pickle-based" if suffix in PICKLE_SUFFIXES else "not a"
        raise GenerationError(
            f"Upscaler '{upscaler}' is {kind} {suffix} file{'' if kind == 'not a' else ''}: the engine only loads "
            ".safetensors upscalers, because unpickling can run code hidden in the file. Use a .safetensors "
            "version (Real-ESRGAN, SwinIR, HAT, ...), or leave Upscaler empty for plain resizing")


def approved_take(take_dir: Path) -> TakeInfo:
    """The take to finalize: readable, complete, every frame on disk."""
    info = read_take(take_dir)
    if info is None:
        raise GenerationError(f"{take_dir} has no readable take.json: finalize a take Viewfinder made")
    if not info.complete:
        raise GenerationError(f"Take {info.take} of shot '{info.shot}' is unfinished: generate it to the end first")
    missing = [f for f in info.frames_total if not (take_dir / frame_name(f)).is_file()]
    if missing:
        raise GenerationError(f"Take {info.take} of shot '{info.shot}' lacks frames {missing[:5]} on disk: "
                              "regenerate it")
    return info


def collect_finalize(scene: bpy.types.Scene, take_dir: Path, project: Project, prefs: Prefs, *, factor: int = 2,
                     upscaler: str = "", detail_strength: float = DETAIL_STRENGTH) -> FinalizePlan:
    """Describe the finalize job of the approved take in ``take_dir``. Main thread (renders maps)."""
    from ..conditioning import ConditioningError, render_shot  # deferred: heavier module
    from ..conditioning.geometry_maps import KINDS, options_from_shot

    # 1. The upscaler (checked again by the engine) and the approved take: complete, frames on disk.
    check_upscaler(upscaler)
    info = approved_take(take_dir)
    shot = scene.viewfinder.shots.get(info.shot)
    if shot is None:
        raise GenerationError(f"Shot '{info.shot}' of take {info.take} is no longer in the scene's shot list")
    # 2. The size: 2x or 4x, capped to the scene's output.
    width, height = int(info.settings["width"]), int(info.settings["height"])
    new_w, new_h, note = final_size(width, height, factor, *output_size(scene))
    notes = [note] if note else []
    # 3. Control maps at the new size (rendered once, re-rendered where files were deleted).
    conditioning_dir = project.shot_dir(info.shot) / f"conditioning-{new_w}x{new_h}"
    gone = _missing_maps(conditioning_dir)
    if gone:
        notes.append(f"Shot '{info.shot}': control maps of frames {gone[:5]} at {new_w}×{new_h} were deleted: "
                     "re-rendered")
    # The take's normal / line-art / seg maps (those it sent carry a weight in its settings), at the new size.
    sent = tuple(k for k in KINDS if f"{k}_weight" in info.settings)
    try:
        result = render_shot(scene, shot, conditioning_dir, width=new_w, height=new_h, force=bool(gone),
                             maps=options_from_shot(shot, sent) if sent else None)
    except ConditioningError as exc:
        raise GenerationError(str(exc)) from exc
    meta = result.meta
    maps: dict[int, dict[str, Path | None]] = {}
    all_maps = result.maps
    for frame in info.frames_total:
        if frame not in all_maps:
            raise GenerationError(f"Shot '{info.shot}' no longer covers frame {frame} of take {info.take}: "
                                  "the shot's frame range changed; regenerate the take")
        maps[frame] = {**all_maps[frame], "source": take_dir / frame_name(frame)}
    # 4. The request: the approved take's prompts, seed and models, at the new size, FLOW-guided.
    coherence = coherence_settings(shot, meta)
    coherence["mode"] = "FLOW"
    finalize = {"upscaler": model_path(upscaler) or None, "detail_strength": round(float(detail_strength), 4)}
    settings = {**info.settings, "width": new_w, "height": new_h, "coherence": coherence, "finalize": finalize,
                "source_take": info.take, "tier": FINALIZED_TIER}
    request = JobRequest(
        shot=info.shot, models=ModelSpec(**info.models), prompt=info.prompt, style_prompt=info.style_prompt,
        negative_prompt=info.negative_prompt, seed=int(info.seed),
        **{k: info.settings[k] for k in ("steps", "guidance_scale", "depth_weight", "pose_weight", "normal_weight",
                                         "lineart_weight", "seg_weight", "control_start", "control_end",
                                         "control_ranges") if k in info.settings},
        width=new_w, height=new_h, coherence=CoherenceSpec(**coherence), finalize=FinalizeSpec(**finalize),
        batch_size=1, **prefs_fields(prefs),
    )
    prompts = {"prompt": info.prompt, "style_prompt": info.style_prompt, "negative_prompt": info.negative_prompt}
    job = ShotJob(shot=info.shot, frames=list(info.frames_total), conditioning_dir=conditioning_dir,
                  takes_dir=take_dir.parent, maps=maps, request=request, models=info.models, prompts=prompts,
                  settings=settings, tier=FINALIZED_TIER)
    return FinalizePlan(job, new_w, new_h, notes)


def place_final(scene: bpy.types.Scene, outcome: TakeOutcome) -> Any:
    """The final take's strip, above the shot's takes (which are muted), scaled to fit the scene's output."""
    from ..generate.shot_job import place_outcome

    strip = place_outcome(scene, outcome)
    if strip is None or outcome.info is None:
        return strip
    fit_strip(scene, strip, int(outcome.info.settings["width"]), int(outcome.info.settings["height"]))
    strip["viewfinder_tier"] = FINALIZED_TIER
    return strip


def fit_strip(scene: bpy.types.Scene, strip: Any, width: int, height: int) -> None:
    """Scale an image strip of ``width`` x ``height`` pixels to fit the scene's frame, centred."""
    render = scene.render
    scale = min(render.resolution_x / width, render.resolution_y / height)
    strip.transform.scale_x = scale
    strip.transform.scale_y = scale
    strip.transform.offset_x = 0.0
    strip.transform.offset_y = 0.0


def is_final(info: TakeInfo | None) -> bool:
    """A Finalize Take take (older take.json files say "final" for it: ``takes.take_tier``)."""
    return take_tier(info) == FINALIZED_TIER
