"""Final from this draft: a draft take's seed and settings, generated again at the final tier.

Main thread (renders the shot's control maps at the final size through ``collect_shot``); the
returned ``ShotJob`` runs in ``generate.run_shot`` like any generation. The draft's recorded
prompts, models, seed and settings win over the shot's current ones, so an edit made after the
draft does not leak into its final; the scene's frame size and the shot's frames must still be
the draft's (the control maps are the scene's), or the error says what changed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..generate.shot import GenerationError, ShotJob
from ..timeline.paths import Project
from ..timeline.takes import DRAFT, FINAL, read_take, take_tier
from .request import JobRequest

if TYPE_CHECKING:
    import bpy

    from ..prefs import Prefs

# Settings of a draft take that are not the final's: the tier and its options.
DRAFT_ONLY = ("tier", "draft")


def collect_final_from_draft(scene: bpy.types.Scene, take_dir: Path, project: Project, prefs: Prefs) -> ShotJob:
    """The final-tier job of the draft take in ``take_dir``. Main thread."""
    from ..generate.shot_job import collect_shot

    # 1. A draft take of a shot still in the scene.
    info = read_take(take_dir)
    if info is None:
        raise GenerationError(f"{take_dir} has no readable take.json: pick a draft take Viewfinder made")
    tier = take_tier(info)
    if tier != DRAFT:
        raise GenerationError(f"Take {info.take} of shot '{info.shot}' is a {tier} take, not a draft: "
                              "Final from this draft needs a take generated at the Draft tier")
    shot = scene.viewfinder.shots.get(info.shot)
    if shot is None:
        raise GenerationError(f"Shot '{info.shot}' of take {info.take} is no longer in the scene's shot list")
    # 2. The shot at the final tier: control maps at the final size, the character blobs, the engine options.
    job = collect_shot(scene, shot, project, prefs, tier=FINAL)
    recorded = {k: v for k, v in info.settings.items() if k not in DRAFT_ONLY}
    final_size = (info.settings.get("draft") or {}).get("final_size") or [recorded["width"], recorded["height"]]
    size = [job.settings["width"], job.settings["height"]]
    if size != list(final_size):
        raise GenerationError(
            f"Shot '{info.shot}': the frame size changed since draft take {info.take} (its final would be "
            f"{final_size[0]}×{final_size[1]}, the scene now gives {size[0]}×{size[1]}): set Long Edge and the "
            "output size back, or make a new draft")
    if job.frames != sorted(info.frames_total):
        raise GenerationError(f"Shot '{info.shot}' no longer covers the frames of draft take {info.take}: "
                              "the shot's frame range changed; make a new draft")
    # 3. The draft's prompts, models, seed and settings, at the final size.
    per_frame: dict[str, Any] = recorded.get("per_frame") or {}
    settings = {**recorded, "width": size[0], "height": size[1]}
    prompts = {**job.prompts, "prompt": info.prompt, "style_prompt": info.style_prompt,
               "negative_prompt": info.negative_prompt}
    merged = {**job.request.to_dict(), **{k: v for k, v in prompts.items() if k != "prompt_keys"},
              **{k: v for k, v in settings.items() if k != "per_frame"}}
    merged.pop("models")
    request = JobRequest.from_parts(merged.pop("shot"), info.models, {}, merged)
    return dataclasses.replace(job, request=request, models=info.models, prompts=prompts, settings=settings,
                               frame_values={int(f): v for f, v in per_frame.items()}, tier=FINAL)
