"""Characters → the engine's `characters` block for one shot (engine/API.md, i9-contract.md).

Plain Python, any thread: callers (core/scene/characters.py, main thread) read
the bible out of Blender into `CharacterSource`s; this module maps each
character's objects to mask ids through the conditioning legend (meta.json),
keeps only the characters visible somewhere in the shot, checks references
and LoRAs before anything is sent, and builds the block.

Every error is a `CharacterError` whose message names the character and the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..hashing import file_sha256
from ..timeline.paths import frame_name
from .image_info import ImageHeaderError, image_size

log = logging.getLogger(__name__)

# Larger references are refused before upload: the image encoder sees 224×224
# anyway, and a 100-megapixel scan would cost seconds to hash, send and decode.
MAX_REFERENCE_PIXELS = 4096 * 4096
# The engine's limit on characters in one shot (engine/contract/schema.py MAX_CHARACTERS;
# the engine refuses more with a 400 too: this check answers before anything is sent).
MAX_CHARACTERS = 4
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PANEL = "Viewfinder ▸ Characters"


class CharacterError(ValueError):
    """A character cannot be sent; the message names it and the fix."""


@dataclass
class CharacterSource:
    """What the bible says about one character, read out of Blender (plain data)."""

    name: str
    object_names: list[str]  # the renderable objects it stands for
    description: str = ""
    references: list[tuple[str, Path]] = field(default_factory=list)  # (label for messages, file)
    identity_strength: float = 0.6
    lora: str = ""  # absolute path, or ""
    lora_scale: float = 1.0
    trigger_words: str = ""
    problem: str = ""  # why it stands for nothing (e.g. its armature was deleted)
    armature: str = ""  # the rig's name: the mask legend's name for the character (meta.json)


@dataclass
class ShotCharacters:
    """The characters part of one shot's request."""

    characters: list[dict[str, Any]] = field(default_factory=list)
    blobs: dict[str, Path] = field(default_factory=dict)  # sha256 → file to upload

    armatures: dict[str, str] = field(default_factory=dict)  # character name → rig name

    def summary(self) -> list[dict[str, Any]]:
        """What take.json records per character: name, mask ids (the identity metric's crops) and rig name.

        The rig name is the legend's name in meta.json, so a run without the bible can be matched to it.
        """
        return [{"name": c["name"], "mask_ids": list(c["mask_ids"]), "armature": self.armatures.get(c["name"], "")}
                for c in self.characters]


def check_reference(character: str, label: str, path: Path, *, who: str = "", where: str = "") -> None:
    """Missing, unreadable, not an image, or above MAX_REFERENCE_PIXELS → CharacterError.

    `who` starts the message (default "Character '<character>'"), `where` is the panel to fix it in.
    """
    who = who or f"Character '{character}'"
    fix = f"choose another image in {where or PANEL + ' ▸ References'}, or remove it"
    if not path.is_file():
        raise CharacterError(f"{who}: reference '{label}' is missing ({path}): {fix}")
    try:
        width, height = image_size(path)
    except ImageHeaderError as exc:
        raise CharacterError(
            f"{who}: reference '{label}' cannot be read ({exc}; {path}): save it as PNG or JPEG, or {fix}"
        ) from exc
    except OSError as exc:
        raise CharacterError(f"{who}: reference '{label}' cannot be read ({exc.strerror or exc}; {path}): {fix}") from exc
    check_size(who, label, width, height)


def check_size(who: str, label: str, width: int, height: int) -> None:
    """Refuse a reference above MAX_REFERENCE_PIXELS; `who` starts the message ("Character 'Hero'")."""
    if width * height > MAX_REFERENCE_PIXELS:
        raise CharacterError(
            f"{who}: reference '{label}' is {width}×{height} ({width * height / 1e6:.1f} megapixels), more than "
            f"the {MAX_REFERENCE_PIXELS / 1e6:.1f} allowed: scale it down (2048 pixels on the long edge is plenty) "
            "or choose another"
        )


def check_lora(character: str, lora: str) -> None:
    """Only an existing .safetensors file; pickles are refused (they can run code when loaded)."""
    if not lora:
        return
    path = Path(lora)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CharacterError(
            f"Character '{character}': LoRA {path.name} is a pickle file, which can run code when loaded: "
            "convert it to .safetensors (or download the .safetensors version) and choose that"
        )
    if path.suffix.lower() != ".safetensors":
        raise CharacterError(
            f"Character '{character}': LoRA {path.name} is not a .safetensors file: choose a .safetensors LoRA"
        )
    if not path.is_file():
        raise CharacterError(f"Character '{character}': LoRA file {path} does not exist: choose it again in {PANEL}")


def legend_ids(legend: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Object (and owner) name → mask id, from meta.json's masks legend."""
    ids: dict[str, int] = {}
    for key, entry in legend.items():
        for name in entry.get("objects", ()):
            ids[name] = int(key)
    return ids


def mask_ids_of(source: CharacterSource, legend: dict[str, dict[str, Any]]) -> list[int]:
    """The mask ids of the character's renderable objects (sorted; empty when none is rendered)."""
    by_name = legend_ids(legend)
    return sorted({by_name[name] for name in source.object_names if name in by_name})


def frame_ids(conditioning_dir: Path, meta: dict[str, Any]) -> dict[int, set[int]]:
    """Per frame, the mask ids present: from meta.json when recorded, else read from the mask PNGs."""
    recorded = (meta.get("masks") or {}).get("ids_per_frame")
    if recorded is not None:
        return {int(frame): set(ids) for frame, ids in recorded.items()}
    import numpy as np

    from ..conditioning.png import read_png

    out: dict[int, set[int]] = {}
    for frame in meta["frames"]:
        path = conditioning_dir / "masks" / frame_name(frame)
        out[int(frame)] = {int(v) for v in np.unique(read_png(path))} if path.is_file() else set()
    return out


def shot_characters(
    sources: list[CharacterSource], meta: dict[str, Any], ids_by_frame: dict[int, set[int]],
) -> ShotCharacters:
    """The characters block for one shot: only characters visible somewhere in it, checked.

    Raises CharacterError for a character with no renderable objects, a bad
    reference or LoRA, or a frame with more than MAX_CHARACTERS characters.
    """
    legend = (meta.get("masks") or {}).get("legend") or {}
    shot = meta.get("shot", "")
    result = ShotCharacters()
    names_seen: set[str] = set()
    for source in sources:
        # 1. Check inputs that do not depend on the shot.
        if source.name in names_seen:
            raise CharacterError(f"Two characters are named '{source.name}': rename one in {PANEL}")
        names_seen.add(source.name)
        if not source.object_names:
            why = f" ({source.problem})" if source.problem else ""
            raise CharacterError(
                f"Character '{source.name}' has no renderable objects{why}: choose its armature (or a collection "
                f"with its meshes) in {PANEL}, or remove the character"
            )
        # 2. Visible in this shot? A character that is not costs nothing: not checked further, not sent.
        ids = mask_ids_of(source, legend)
        frames = {frame for frame, present in ids_by_frame.items() if present & set(ids)}
        if not frames:
            continue
        # 3. References and LoRA, checked before anything is sent.
        shas = []
        for label, path in source.references:
            check_reference(source.name, label, path)
            sha = file_sha256(path)
            result.blobs[sha] = path
            shas.append(sha)
        check_lora(source.name, source.lora)
        result.armatures[source.name] = source.armature
        # The engine appends the trigger words to the description (CharacterSpec.region_prompt).
        result.characters.append({
            "name": source.name,
            "description": source.description.strip(),
            "mask_ids": ids,
            "references": shas,
            "identity_strength": round(float(source.identity_strength), 4),
            "lora": source.lora or None,
            "lora_scale": round(float(source.lora_scale), 4),
            "trigger_words": source.trigger_words.strip(),
        })
    # 4. One pixel, one owner: an object cannot stand for two characters.
    check_one_owner(result.characters, legend)
    # 5. No more characters than the engine keeps apart (per shot, and so per frame: engine/API.md).
    check_count(result.characters, shot)
    return result


def check_one_owner(characters: list[dict[str, Any]], legend: dict[str, Any]) -> None:
    """CharacterError when one mask id (an object) stands for two characters."""
    owners: dict[int, str] = {}
    for entry in characters:
        for number in entry["mask_ids"]:
            if number in owners:
                what = (legend.get(str(number)) or {}).get("name", f"mask id {number}")
                raise CharacterError(
                    f"Characters '{owners[number]}' and '{entry['name']}' both stand for '{what}': "
                    f"keep it in one of them ({PANEL}: armature, extra objects, collection)"
                )
            owners[number] = entry["name"]


def check_count(characters: list[dict[str, Any]], shot: str) -> None:
    """CharacterError past MAX_CHARACTERS in one shot."""
    if len(characters) > MAX_CHARACTERS:
        listed = ", ".join(f"'{c['name']}'" for c in characters)
        raise CharacterError(
            f"Shot '{shot}' shows {len(characters)} characters ({listed}); the engine keeps at most "
            f"{MAX_CHARACTERS} apart in one shot: split the shot, or remove the extras from {PANEL} "
            "(they then follow the shot prompt)"
        )
