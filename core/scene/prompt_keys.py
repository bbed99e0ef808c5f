"""Prompt keys and schedules on a shot: add, remove, and import a Deforum schedule as F-curves.

Keys are written as ordinary F-curves on the Scene (`viewfinder.shot_list[i].prompt_keys[k].weight`,
`viewfinder.shot_list[i].depth_weight`, ...), so the Graph Editor and Dope Sheet edit them
like any other animation. Main thread only (writes bpy data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import anim_paths
from .anim_sample import shot_prefix
from .deforum import Schedule

if TYPE_CHECKING:
    import bpy

log = logging.getLogger(__name__)


def key_values(scene: bpy.types.Scene, item: Any, prop: str, keys: list[tuple[float, float]],
               interpolation: str = "LINEAR") -> Any:
    """Key ``item.prop`` at each (frame, value), replacing the curve's old keys; returns the F-curve.

    Values are written to the curve as given (a seed of -5 stays -5): clamping is the
    generator's job, which warns about it, rather than a silent change here.
    """
    path = item.path_from_id(prop)
    existing = anim_paths.curves_under(scene, path.rsplit(".", 1)[0]).get(prop)
    if existing is not None and not existing[1]:
        existing[0].keyframe_points.clear()
    for frame, _value in keys:
        item.keyframe_insert(prop, frame=frame)
    fcurve = anim_paths.curves_under(scene, path.rsplit(".", 1)[0])[prop][0]
    wanted = dict(keys)
    for point in fcurve.keyframe_points:
        value = wanted.get(point.co[0])
        if value is not None:
            point.co[1] = value
        point.interpolation = interpolation
        point.handle_left_type = point.handle_right_type = "AUTO_CLAMPED"
    fcurve.update()
    return fcurve


def add_prompt_key(scene: bpy.types.Scene, shot: Any, prompt: str, frame: int) -> Any:
    """A new prompt key whose weight is keyed 0 on the frame before ``frame`` and 1 on ``frame``."""
    key = shot.prompt_keys.add()
    key.name = key.prompt = prompt
    shot.active_prompt_key_index = len(shot.prompt_keys) - 1
    key_values(scene, key, "weight", [(frame - 1, 0.0), (frame, 1.0)])
    return key


def remove_prompt_key(scene: bpy.types.Scene, shot: Any, index: int) -> None:
    """Delete prompt key ``index`` and its curves; later keys' curves move with them."""
    prefix = shot_prefix(scene, shot)
    shot.prompt_keys.remove(index)
    anim_paths.shift_prompt_keys(scene, prefix, index)
    shot.active_prompt_key_index = max(0, min(shot.active_prompt_key_index, len(shot.prompt_keys) - 1))


@dataclass
class ImportResult:
    prompt_keys: int = 0
    curves: list[str] = field(default_factory=list)  # the shot properties keyed
    beyond_end: list[int] = field(default_factory=list)  # timeline frames after the shot's last


def import_schedule(scene: bpy.types.Scene, shot: Any, schedule: Schedule, *, switch: bool = False) -> ImportResult:
    """Turn a parsed Deforum schedule into prompt keys and F-curves on ``shot``.

    Deforum frame 0 is the shot's first frame. Prompts replace the shot's prompt keys:
    one key per distinct prompt, its weight keyed 1 at its frames and 0 at the other
    prompts' frames, so consecutive prompts cross-fade (``switch``: hold, then cut).
    Value schedules replace the curve of the property they name.
    """
    result = ImportResult()
    start = shot.frame_start
    interpolation = "CONSTANT" if switch else "LINEAR"
    # 1. Prompts.
    if schedule.prompts:
        while len(shot.prompt_keys):
            remove_prompt_key(scene, shot, len(shot.prompt_keys) - 1)
        texts = list(dict.fromkeys(text for _, text in schedule.prompts))
        for text in texts:
            key = shot.prompt_keys.add()
            key.name = key.prompt = text
            key_values(scene, key, "weight", [(start + f, 1.0 if t == text else 0.0) for f, t in schedule.prompts],
                       interpolation)
        result.prompt_keys = len(texts)
        shot.active_prompt_key_index = 0
        result.beyond_end += [start + f for f, _ in schedule.prompts if start + f > shot.frame_end]
    # 2. Values; the seed always holds between keys.
    for prop, keys in schedule.values.items():
        if not keys:
            continue
        if prop == "guidance_scale":
            shot.use_guidance_scale = True
        if prop.endswith(("_start", "_end")) and not prop.startswith("control_"):  # a map's own range
            setattr(shot, f"use_{prop.rsplit('_', 1)[0]}_range", True)
        key_values(scene, shot, prop, [(start + f, v) for f, v in keys], "CONSTANT" if prop == "seed" else
                   interpolation)
        result.curves.append(prop)
        result.beyond_end += [start + f for f, _ in keys if start + f > shot.frame_end]
    result.beyond_end = sorted(set(result.beyond_end))
    return result
