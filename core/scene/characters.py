"""The character bible read out of Blender: objects, reference files, the film look. Main thread only.

`character_objects` resolves what a character stands for (its armature, every
mesh the armature deforms or carries, extra objects, a collection);
`read_bible` turns `scene.viewfinder.characters` into plain `CharacterSource`s;
`film_look` gives the film-wide references. Blender images that are packed or
generated (not a file on disk) are written once into `<project>/references/`
so that they can be hashed and uploaded like files.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..conditioning.masks import RENDERABLE, owner_of
from ..hashing import file_sha256
from ..jobs.characters import CharacterSource, check_reference, check_size

log = logging.getLogger(__name__)

def _owner(obj: Any) -> Any:
    """The armature that deforms or carries `obj`, else None (the mask legend's rule: conditioning/masks.py)."""
    owner = owner_of(obj)
    return None if owner is obj else owner


def character_objects(scene: Any, character: Any) -> list[Any]:
    """The scene's renderable objects that belong to `character`, in name order."""
    chosen: dict[str, Any] = {}
    armature = character.armature
    if armature is not None:
        for obj in scene.objects:
            if obj.type in RENDERABLE and _owner(obj) == armature:
                chosen[obj.name] = obj
    for ref in character.extra_objects:
        if ref.object is not None and ref.object.type in RENDERABLE:
            chosen[ref.object.name] = ref.object
    if character.collection is not None:
        for obj in character.collection.all_objects:
            if obj.type in RENDERABLE:
                chosen[obj.name] = obj
    return [chosen[name] for name in sorted(chosen)]


def deformed_by(scene: Any, armature: Any) -> list[Any]:
    """Renderable objects the armature deforms or carries: what a new character stands for by default."""
    return sorted((o for o in scene.objects if o.type in RENDERABLE and _owner(o) == armature), key=lambda o: o.name)


def add_character_from_selection(scene: Any, selected: list[Any], active: Any) -> tuple[Any, str]:
    """A new character for the selected armature (and any selected meshes it does not deform)."""
    armatures = [o for o in selected if o.type == "ARMATURE"]
    if active is not None and active.type == "ARMATURE":
        armature = active
    else:
        armature = armatures[0] if armatures else None
    settings = scene.viewfinder
    if armature is not None:
        taken = [c.name for c in settings.characters if c.armature == armature]
        if taken:
            return None, f"'{armature.name}' is already the character '{taken[0]}'"
    character = settings.characters.add()
    character.name = _unique_name(settings.characters, (armature or active or selected[0]).name, character)
    character.armature = armature
    if armature is not None:
        character.armature_name = armature.name
    deformed = set(deformed_by(scene, armature)) if armature is not None else set()
    for obj in sorted(selected, key=lambda o: o.name):
        if obj.type in RENDERABLE and obj not in deformed:
            character.extra_objects.add().object = obj
    settings.active_character_index = len(settings.characters) - 1
    return character, ""


def _unique_name(collection: Any, wanted: str, item: Any) -> str:
    names = {c.name for c in collection if c != item}
    name, number = wanted, 1
    while name in names:
        number += 1
        name = f"{wanted}.{number:03d}"
    return name


def problem_of(character: Any) -> str:
    """Why a character stands for nothing, in words, or ""."""
    if character.armature is None and character.armature_name:
        return f"its armature '{character.armature_name}' was deleted"
    if character.armature is None and not character.extra_objects and character.collection is None:
        return "it has no armature"
    return ""


def image_file(image: Any, cache_dir: Path) -> Path:
    """A file holding the Blender image's pixels: its own file when it has one, else one written here.

    Images without a file larger than MAX_REFERENCE_PIXELS are not written
    (the caller checks `image.size` first, see `_reference_file`).
    """
    import bpy  # deferred: importable without Blender

    packed = getattr(image, "packed_file", None)
    if packed is not None:
        data = bytes(packed.data)
        ext = ".jpg" if data[:2] == b"\xff\xd8" else ".png"
        target = cache_dir / f"{hashlib.sha256(data).hexdigest()}{ext}"
        if not target.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return target
    if image.source == "FILE" and image.filepath:
        return Path(bpy.path.abspath(image.filepath, library=image.library)).resolve()
    # Generated or rendered in this session: write its pixels (8-bit RGBA PNG).
    return _write_pixels(image, cache_dir)


def _write_pixels(image: Any, cache_dir: Path) -> Path:
    import numpy as np

    from ..conditioning.png import encode_png

    width, height = image.size
    if width * height == 0:
        return cache_dir / f"{image.name}-has-no-pixels.png"  # check_reference says it is missing
    pixels = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    rgb = (np.clip(pixels.reshape(height, width, 4)[::-1, :, :3], 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    data = encode_png(np.ascontiguousarray(rgb))
    target = cache_dir / f"{hashlib.sha256(data).hexdigest()}.png"
    if not target.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return target


def _reference_file(who: str, image: Any, cache_dir: Path) -> Path:
    """`image_file`, refusing an image without a file that is too large before writing it out."""
    if getattr(image, "packed_file", None) is None and image.source != "FILE":
        width, height = image.size
        check_size(who, image.name, width, height)
    return image_file(image, cache_dir)


def _abspath(value: str) -> str:
    if not value:
        return ""
    import bpy  # deferred

    return str(Path(bpy.path.abspath(value)).resolve()) if value.startswith("//") or not Path(value).is_absolute() \
        else value


def read_bible(scene: Any, cache_dir: Path, only: str | None = None) -> list[CharacterSource]:
    """Every character of the scene (or the one named `only`) as plain data: objects by current name,
    references as files."""
    sources = []
    for character in scene.viewfinder.characters:
        if only is not None and character.name != only:
            continue
        if character.armature is not None and character.armature_name != character.armature.name:
            character.armature_name = character.armature.name  # follows renames, for the deleted-rig message
        refs = []
        for index, ref in enumerate(character.references):
            if ref.image is None:
                continue
            label = ref.image.name or f"#{index + 1}"
            refs.append((label, _reference_file(f"Character '{character.name}'", ref.image, cache_dir)))
        sources.append(CharacterSource(
            name=character.name,
            object_names=[o.name for o in character_objects(scene, character)],
            description=character.description,
            references=refs,
            identity_strength=character.identity_strength,
            lora=_abspath(character.lora),
            lora_scale=character.lora_scale,
            trigger_words=character.trigger_words,
            problem=problem_of(character),
            armature=character.armature.name if character.armature is not None else "",
        ))
    return sources


def film_look(scene: Any, cache_dir: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The film-wide request fields (style and palette references) and the blobs they need."""
    settings = scene.viewfinder
    fields: dict[str, Any] = {}
    blobs: dict[str, Path] = {}
    for key, image in (("style_reference", settings.style_reference), ("palette_reference", settings.palette_reference)):
        if image is None:
            continue
        who = f"Film look: {key.replace('_', ' ')}"
        path = _reference_file(who, image, cache_dir)
        check_reference("", image.name, path, who=who,
                        where="Viewfinder ▸ Film Look")
        sha = file_sha256(path)
        blobs[sha] = path
        fields[key] = sha
    if "style_reference" in fields:
        fields["style_strength"] = round(float(settings.style_strength), 4)
    return fields, blobs


@dataclass
class ShotCast:
    """One shot's character and film-look request parts, as plain data. Empty parts when nothing
    applies, so a film without a bible sends exactly the request it sent before."""

    settings: dict[str, Any] = field(default_factory=dict)  # request fields: characters, style/palette references
    models: dict[str, Any] = field(default_factory=dict)  # ip_adapter / image_encoder, when a reference is sent
    blobs: dict[str, Path] = field(default_factory=dict)  # sha -> the file to upload
    characters: list[dict[str, Any]] = field(default_factory=list)  # [{name, mask_ids}] for take.json
    masks: bool = False  # whether frames need their mask
    warnings: list[str] = field(default_factory=list)  # what was left out for the model family, and why


def collect_characters(scene: Any, conditioning_dir: Path, meta: dict[str, Any], cache_dir: Path) -> ShotCast:
    """One shot's character and film-look request parts.

    Raises CharacterError / ValueError with a message naming the character and the fix.
    """
    from ..jobs.characters import frame_ids, shot_characters

    settings = scene.viewfinder
    # 1. Characters visible in this shot (reading the legend and per-frame ids is cheap).
    sources = read_bible(scene, cache_dir)
    chars = shot_characters(sources, meta, frame_ids(conditioning_dir, meta)) if sources else None
    # 2. The film look applies to every shot.
    look, blobs = film_look(scene, cache_dir)
    out = ShotCast(blobs=dict(blobs))
    if chars is not None and chars.characters:
        out.settings["characters"] = chars.characters
        out.blobs.update(chars.blobs)
        out.characters = chars.summary()
        out.masks = True
    out.settings.update(look)
    # 3. The IP-Adapter only where a reference image is sent: other shots keep their cache keys.
    if not settings.ip_adapter.strip():  # no IP-Adapter: reference images would be ignored, so none are sent
        _drop_references(out)
    uses_images = "style_reference" in look or any(c["references"] for c in out.settings.get("characters", ()))
    if uses_images and settings.ip_adapter.strip():
        out.models = {
            "ip_adapter": _model_value(settings.ip_adapter),
            "image_encoder": _model_value(settings.image_encoder) or None,
        }
    return out


def _drop_references(cast: ShotCast) -> bool:
    """Take the reference images (characters' and the style reference) out of ``cast``; the palette stays (it
    is matched, not an IP-Adapter input). True when there were some."""
    had = "style_reference" in cast.settings or any(c["references"] for c in cast.settings.get("characters", ()))
    for character in cast.settings.get("characters", ()):
        character["references"] = []
    cast.settings.pop("style_reference", None)
    cast.settings.pop("style_strength", None)
    cast.models = {}
    palette = cast.settings.get("palette_reference")
    cast.blobs = {sha: path for sha, path in cast.blobs.items() if sha == palette}
    return had


def cast_for_family(cast: ShotCast, family: str, shot_name: str) -> ShotCast:
    """``cast`` without what ``family`` cannot take, each left out with a warning giving the reason
    (core/jobs/families.WHY_NOT): on Flux.1, regional characters and the IP-Adapter's reference images.

    The bible stays as it is: switching the film back to SD 1.5 or SDXL sends it again. The engine refuses
    the same parts with the same reasons (engine/models/checks.check_features), so a request from elsewhere
    is told, and the add-on never sends a job it would refuse.
    """
    from ..jobs.families import label, why_not

    if why_not(family, "ip_adapter_masks") and _drop_references(cast):
        cast.warnings.append(f"Shot '{shot_name}': reference images are not used on {label(family)}: "
                             f"{why_not(family, 'ip_adapter_masks')}")
    if why_not(family, "regional_characters") and cast.settings.get("characters"):
        names = ", ".join(c["name"] for c in cast.settings.pop("characters"))
        cast.warnings.append(f"Shot '{shot_name}': characters ({names}) are not used on {label(family)}: "
                             f"{why_not(family, 'regional_characters')}")
        cast.characters, cast.masks = [], False
    return cast


def _model_value(value: str) -> str:
    """Hub ids pass through; Blender-relative paths (//...) become absolute."""
    value = value.strip()
    if value.startswith("//"):
        import bpy  # deferred

        return bpy.path.abspath(value)
    return value
