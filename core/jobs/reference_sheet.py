"""Make Reference Sheet: a character's front, three-quarter and side views, generated from its own rig.

Everything but the character is hidden for the render, the armature is put in
its rest pose (the neutral pose), an orthographic camera steps round it (the
current frame front, then three-quarter, then side), and the ordinary
conditioning renders exact depth and OpenPose maps of those three views; all
of it is restored afterwards. The engine then generates them
with the character's description (and LoRA), and the images come back as
Blender images in `character.sheet`; the user keeps the ones they like as
references (viewfinder.add_reference). The sheet lives under
`<project>/characters/<name>/`.

`prepare_sheet` runs on the main thread (bpy); `run_shot` (core/generate/shot.py)
may run anywhere; `load_sheet` runs on the main thread again.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..generate.shot import GenerationError, ShotJob, TakeOutcome
from ..scene.characters import character_objects, problem_of, read_bible
from ..scene.resolution import generation_size
from ..timeline.paths import Project, folder_name, frame_name
from .characters import CharacterSource, check_lora, shot_characters
from .request import JobRequest

if TYPE_CHECKING:
    from ..prefs import Prefs

log = logging.getLogger(__name__)

VIEWS = (("front", 0.0), ("three-quarter", 45.0), ("side", 90.0))  # degrees round the character, from its front
# One prompt for the three frames: each frame's maps give its view, and naming views in the prompt
# invites the model to draw several figures in one frame.
SHEET_PROMPT = "full body, standing in a neutral pose, plain light grey background, character reference"


@dataclass
class SheetJob:
    character: str
    job: ShotJob


def sheet_dir(project: Project, character_name: str) -> Path:
    return project.root / "characters" / folder_name(character_name)


def prepare_sheet(scene: Any, character: Any, project: Project, prefs: Prefs) -> SheetJob:
    """Render the three views' control maps and describe the engine job. Main thread.

    Raises GenerationError naming the character and the fix.
    """
    # 1. Check inputs.
    objects, source = sheet_inputs(scene, character, project)
    settings = scene.viewfinder
    size, _ = generation_size(1, 1, 1.0, 1.0, max(64, settings.long_edge))  # square frames at Long Edge
    out = sheet_dir(project, character.name)
    # 2. Only the character renders, in its rest pose, seen by a camera stepping round it over three frames.
    conditioning_dir = out / "conditioning"
    meta, maps = render_views(scene, character, objects, conditioning_dir, size)
    # 3. The engine job: one frame per view (the pose and depth maps set the view), the character's
    #    description through its own region.
    return SheetJob(character.name, sheet_job(scene, character, source, objects, conditioning_dir, out, size, meta,
                                              maps, prefs))


def sheet_inputs(scene: Any, character: Any, project: Project) -> tuple[list[Any], CharacterSource]:
    """The character's renderable objects and its bible entry; GenerationError when it has none."""
    objects = character_objects(scene, character)
    if not objects:
        problem = problem_of(character) or "it stands for no renderable objects"
        raise GenerationError(
            f"Character '{character.name}' has nothing to draw ({problem}): choose its armature in "
            "Viewfinder ▸ Characters"
        )
    try:
        (source,) = read_bible(scene, project.root / "references", only=character.name)
        check_lora(character.name, source.lora)
    except ValueError as exc:
        raise GenerationError(str(exc)) from exc
    return objects, source


def render_views(scene: Any, character: Any, objects: list[Any], conditioning_dir: Path,
                 size: int) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """(meta.json, per-frame maps) of the three views, rendered with everything else hidden.

    This happens in the user's scene (everything else hidden for the render, all restored after):
    Blender only evaluates the context scene's objects, and the pose maps read evaluated bones.
    """
    import bpy

    from ..conditioning import ConditioningError, render_shot
    from ..conditioning.render import RenderGuard

    armature = character.armature
    first = scene.frame_current
    original_frame, original_camera = scene.frame_current, scene.camera
    keep = {o.name for o in objects} | ({armature.name} if armature is not None else set())
    camera = None
    try:
        with RenderGuard() as guard:
            for obj in scene.objects:
                if obj.name not in keep and not obj.hide_render:
                    guard.set(obj, "hide_render", True)
            if armature is not None:
                guard.set(armature.data, "pose_position", "REST")
            camera = _sheet_camera(scene, objects, armature, first)
            shot = SimpleNamespace(name=f"{character.name} sheet", camera=camera, frame_start=first,
                                   frame_end=first + len(VIEWS) - 1)
            try:
                result = render_shot(scene, shot, conditioning_dir, width=size, height=size)
            except ConditioningError as exc:
                raise GenerationError(f"Character '{character.name}': {exc}") from exc
            return result.meta, {frame: dict(files) for frame, files in result.maps.items()}
    finally:
        if camera is not None:
            cam_data = camera.data
            bpy.data.objects.remove(camera)
            bpy.data.cameras.remove(cam_data)
        scene.camera = original_camera
        scene.frame_set(original_frame)


def sheet_job(scene: Any, character: Any, source: CharacterSource, objects: list[Any], conditioning_dir: Path,
              out: Path, size: int, meta: dict[str, Any], maps: dict[int, dict[str, Any]], prefs: Prefs) -> ShotJob:
    """The sheet's engine job. The sheet is how references are made: it carries the description and
    LoRA, no reference images."""
    from ..generate.shot_job import prefs_fields, scene_models
    from .characters import frame_ids

    settings = scene.viewfinder
    bare = CharacterSource(name=source.name, object_names=[o.name for o in objects], description=source.description,
                           lora=source.lora, lora_scale=source.lora_scale, trigger_words=source.trigger_words)
    block = shot_characters([bare], meta, frame_ids(conditioning_dir, meta))
    models = scene_models(settings)
    description = character.description.strip() or character.name
    prompts = {
        "prompt": f"{description}, {SHEET_PROMPT}",
        "style_prompt": settings.style_prompt,
        "negative_prompt": "several people, cropped, blurry, deformed, text, watermark",
    }
    job_settings: dict[str, Any] = {
        "seed": 0, "steps": int(settings.steps), "guidance_scale": round(float(settings.guidance_scale), 4),
        "width": size, "height": size, "depth_weight": 1.0, "pose_weight": 1.0,
        "control_start": 0.0, "control_end": 1.0, "coherence": {"mode": "INDEPENDENT"},
    }
    if block.characters:
        job_settings["characters"] = block.characters
        for frame, frame_maps in maps.items():
            frame_maps["mask"] = conditioning_dir / "masks" / frame_name(frame)
    request = JobRequest.from_parts(f"{character.name} sheet", models, prompts, job_settings,
                                    batch_size=int(settings.batch_size), **prefs_fields(prefs))
    return ShotJob(
        shot=f"{character.name} sheet", frames=sorted(maps), conditioning_dir=conditioning_dir,
        takes_dir=out / "takes", maps=maps, request=request, models=models, prompts=prompts,
        settings=job_settings, characters=block.summary(),
    )


def _sheet_camera(scene: Any, objects: list[Any], armature: Any, first: int) -> Any:
    """An orthographic camera framing the character from the front (frame `first`), three-quarter, side."""
    import bpy
    from mathutils import Matrix, Vector

    data = bpy.data.cameras.new("Viewfinder Sheet Camera")
    data.type = "ORTHO"
    camera = bpy.data.objects.new("Viewfinder Sheet Camera", data)
    camera.rotation_mode = "QUATERNION"
    scene.collection.objects.link(camera)
    scene.camera = camera
    scale = 0.0
    for frame, (_view, degrees) in enumerate(VIEWS, start=first):
        # The rig may move between frames (its own animation): frame it where it is at each one.
        scene.frame_set(frame)
        depsgraph = bpy.context.evaluated_depsgraph_get()
        points = []
        for obj in objects:
            evaluated = obj.evaluated_get(depsgraph)
            points += [evaluated.matrix_world @ Vector(corner) for corner in evaluated.bound_box]
        low = Vector((min(p.x for p in points), min(p.y for p in points), min(p.z for p in points)))
        high = Vector((max(p.x for p in points), max(p.y for p in points), max(p.z for p in points)))
        center, extent = (low + high) / 2, high - low
        scale = max(scale, max(extent.x, extent.y, extent.z) * 1.15)
        data.clip_end = max(data.clip_end, extent.length * 10, 100.0)
        # The character faces its rig's -Y (Blender's meta-rig convention); without a rig, the world's -Y.
        basis = armature.matrix_world.to_3x3().normalized() if armature is not None else Matrix.Identity(3)
        angle = math.radians(degrees)
        direction = basis @ Vector((math.sin(angle), -math.cos(angle), 0.0))  # from the character to the camera
        camera.location = center + direction * (extent.length * 2 + 1.0)
        camera.rotation_quaternion = (-direction).to_track_quat("-Z", "Y")
        camera.keyframe_insert("location", frame=frame)
        camera.keyframe_insert("rotation_quaternion", frame=frame)
    data.ortho_scale = scale
    for fcurve in _fcurves(camera):
        for point in fcurve.keyframe_points:
            point.interpolation = "CONSTANT"
    return camera


def _fcurves(obj: Any) -> list[Any]:
    """The object's F-curves (Blender 4.4+ puts them in layered actions' channelbags)."""
    action = obj.animation_data.action if obj.animation_data else None
    if action is None:
        return []
    if hasattr(action, "fcurves") and len(action.fcurves):
        return list(action.fcurves)
    curves = []
    for layer in getattr(action, "layers", ()):
        for strip in layer.strips:
            for bag in getattr(strip, "channelbags", ()):
                curves += list(bag.fcurves)
    return curves


def load_sheet(scene: Any, character_name: str, outcome: TakeOutcome) -> list[Any]:
    """Load a finished sheet take as Blender images into the character's `sheet` list. Main thread."""
    import bpy

    character = scene.viewfinder.characters.get(character_name)
    if character is None:
        raise GenerationError(f"Character '{character_name}' was removed while its sheet was generated")
    if not outcome.complete or outcome.take_dir is None:
        reason = outcome.error or ("cancelled" if outcome.cancelled else "unfinished")
        raise GenerationError(f"Character '{character_name}': the reference sheet failed ({reason})")
    character.sheet.clear()
    images = []
    for frame, (view, _deg) in zip(sorted(outcome.frames), VIEWS):
        path = outcome.take_dir / frame_name(frame)
        name = f"{character_name} {view}"
        image = bpy.data.images.get(name)
        if image is not None and Path(bpy.path.abspath(image.filepath)) != path:
            bpy.data.images.remove(image)
            image = None
        if image is None:
            image = bpy.data.images.load(str(path), check_existing=True)
            image.name = name
        else:
            image.reload()
        character.sheet.add().image = image
        images.append(image)
    return images
