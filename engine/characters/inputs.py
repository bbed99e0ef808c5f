"""Characters, references and frame masks of a job: checked at submit, decoded on the worker.

Submit (HTTP thread) checks what it can without running a model: the number of
characters, their mask ids, that every mask and reference blob was uploaded, each
mask's pixel size (read from the PNG header, before any pixel is decoded) and each
reference's pixel count and readability. Every error is a 400 whose ``field`` is the
JSON path and whose message names the character and the fix. See engine/IDENTITY.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..contract.errors import BadRequest, EngineFault
from ..contract.schema import MAX_CHARACTERS, CharacterSpec, JobRequest
from ..models.refs import ModelRef, resolve_ref
from ..storage import Storage

logger = logging.getLogger(__name__)

# A reference above this many pixels is refused before it is decoded (16.7 MP: a 4096 x 4096
# image). The image encoder sees 224 x 224, so bigger files only cost memory and time.
MAX_REFERENCE_PIXELS = 4096 * 4096
MASK_MODES = ("I;16", "I;16B", "I;16L", "I", "L")


def _who(character: CharacterSpec) -> str:
    return f"Character '{character.name}'"


def check_characters(request: JobRequest, storage: Storage) -> dict[str, ModelRef | None]:
    """Check the identity fields of ``request``; returns the resolved character LoRAs by name.

    Raises ``BadRequest`` (400) naming the field, the character and the fix.
    """
    characters = request.characters
    # 1. The method's limit (engine/IDENTITY.md): more characters are refused, all named.
    if len(characters) > MAX_CHARACTERS:
        names = ", ".join(f"'{c.name}'" for c in characters)
        raise BadRequest(
            f"characters: {len(characters)} characters are visible in this shot ({names}) but the engine "
            f"conditions at most {MAX_CHARACTERS} per shot; split the shot, or leave the least important "
            "characters out of the bible for it", field="characters", code="too_many_characters",
        )
    # 2. Names once, a region for each, no mask id claimed twice.
    owner: dict[int, str] = {}
    for i, character in enumerate(characters):
        if any(c.name == character.name for c in characters[:i]):
            raise BadRequest(f"characters[{i}].name: {_who(character)} is listed twice; send each character once",
                             field=f"characters[{i}].name")
        if not character.mask_ids:
            raise BadRequest(
                f"characters[{i}].mask_ids: {_who(character)} has no renderable objects (no mask ids), so it has "
                "no region in any frame; give it an armature or meshes that render, or leave it out of this shot",
                field=f"characters[{i}].mask_ids", code="no_region",
            )
        for number in character.mask_ids:
            if number in owner and owner[number] != character.name:
                raise BadRequest(
                    f"characters[{i}].mask_ids: {_who(character)} and Character '{owner[number]}' both claim "
                    f"mask id {number}; an object belongs to one character only",
                    field=f"characters[{i}].mask_ids",
                )
            owner[number] = character.name
    # 3. Frame masks: uploaded, and exactly the job's size (read from the header, not decoded).
    if characters and not any(f.mask for f in request.frames):
        raise BadRequest("frames[0].mask: characters were sent but no frame has an id mask; send each frame's "
                         "mask (conditioning masks/NNNN.png) so the engine knows where each character is",
                         field="frames[0].mask")
    if characters:
        for i, frame in enumerate(request.frames):
            if frame.mask:
                check_mask_header(storage, frame.mask, request.width, request.height, f"frames[{i}].mask")
    # 4. References: only read when an IP-Adapter will use them.
    if request.models.ip_adapter:
        for i, character in enumerate(characters):
            for j, sha in enumerate(character.references):
                check_image_blob(storage, sha, f"characters[{i}].references[{j}]",
                                 f"reference image {j + 1} of {_who(character)}")
        if request.style_reference:
            check_image_blob(storage, request.style_reference, "style_reference", "film's style reference")
    if request.palette_reference:
        check_image_blob(storage, request.palette_reference, "palette_reference", "film's palette reference")
    # 5. Character LoRAs: .safetensors files that exist (pickles refused like every model).
    loras: dict[str, ModelRef | None] = {}
    for i, character in enumerate(characters):
        if character.lora:
            field = f"characters[{i}].lora"
            try:
                loras[character.name] = resolve_ref(character.lora, field, "lora")
            except EngineFault as exc:
                raise BadRequest(f"{_who(character)}: {exc.message}", field=field, code=exc.code) from exc
    return loras


def check_mask_header(storage: Storage, sha: str, width: int, height: int, field: str) -> None:
    """A mask blob exists, is a whole PNG of the job's size in a grey mode; no pixel is decoded
    (engine/images.py: the size the decoder parsed, every header read)."""
    from .. import images

    if not storage.has_blob(sha):
        raise BadRequest(f"{field}: blob {sha} is not on the engine; upload it first with PUT /blobs/{sha}",
                         field=field, code="missing_blob")
    try:
        fmt, mode = images.check(storage.blob_path(sha), size=(width, height), max_pixels=width * height,
                                 field=field, what="mask")
    except BadRequest as exc:
        if exc.code == "map_size_mismatch":
            raise BadRequest(f"{exc.message}; masks must be rendered at the frame size (re-render the shot's "
                             "conditioning)", field=field, code="mask_size_mismatch") from None
        raise
    if fmt != "PNG" or mode not in MASK_MODES:
        raise BadRequest(f"{field}: the mask must be a 16-bit (or 8-bit) grey id PNG, got {fmt} {mode}",
                         field=field)


def check_image_blob(storage: Storage, sha: str, field: str, what: str) -> None:
    """A reference image exists, is at most MAX_REFERENCE_PIXELS (checked before decoding) and decodes.
    ``what`` follows "the" in the messages ("film's style reference")."""
    from .. import images

    if not storage.has_blob(sha):
        raise BadRequest(f"{field}: the {what} ({sha[:12]}) is not on the engine; upload it with PUT /blobs/{sha} "
                         "(the image file may be missing on the artist's machine)", field=field,
                         code="missing_blob")
    try:
        images.decode(storage.blob_path(sha), max_pixels=MAX_REFERENCE_PIXELS, formats=images.PICTURES,
                      field=field, what=what).close()
    except BadRequest as exc:
        if exc.code == "image_too_large":
            raise BadRequest(f"{exc.message} (limit {MAX_REFERENCE_PIXELS / 1e6:.1f} MP; the encoder sees 224x224)",
                             field=field, code="reference_too_large") from None
        raise BadRequest(f"{field}: {what} cannot be read as an image ({exc.message.removeprefix(field + ': ')}); "
                         "use a PNG or JPEG file", field=field, code="unreadable_reference") from None


# Worker side ------------------------------------------------------------------------


def read_image(storage: Storage, sha: str) -> Any:
    """A reference blob as an RGB PIL image (checked at submit; decoded within the same bound)."""
    from .. import images

    with images.decode(storage.read_blob(sha), max_pixels=MAX_REFERENCE_PIXELS, formats=images.PICTURES,
                       field="references", what="reference image") as img:
        return img.convert("RGB")


def decode_mask(data: bytes, width: int, height: int) -> np.ndarray:
    """The uint16 id mask of a frame; the decoder holds it to the job's size (engine/images.py)."""
    from .. import images

    with images.decode(data, size=(width, height), max_pixels=width * height, field="frames", what="mask") as img:
        array = np.asarray(img)
    return array.astype(np.uint16) if array.dtype != np.uint16 else array


def owner_map(mask: np.ndarray, characters: list[CharacterSpec]) -> np.ndarray:
    """H x W uint8: 0 background (or an object of no sent character), k+1 for ``characters[k]``."""
    owner = np.zeros(mask.shape, np.uint8)
    for k, character in enumerate(characters):
        owner[np.isin(mask, np.asarray(character.mask_ids, np.uint16))] = k + 1
    return owner


@dataclass
class FrameRegions:
    """Which characters own which pixels of one frame."""

    owner: np.ndarray  # H x W uint8 (0: nobody)
    visible: tuple[int, ...]  # indices into request.characters, in order


def frame_regions(storage: Storage, request: JobRequest, mask_sha: str | None) -> FrameRegions | None:
    if not request.characters or mask_sha is None:
        return None
    owner = owner_map(decode_mask(storage.read_blob(mask_sha), request.width, request.height), request.characters)
    visible = tuple(int(k) - 1 for k in np.unique(owner) if k > 0)
    return FrameRegions(owner, visible)


def identity_cache_inputs(request: JobRequest, loras: dict[str, ModelRef | None],
                          ip_identity: str | None) -> dict[str, Any]:
    """What the identity fields change in a frame; empty (no key change) for a job without them."""
    from . import regional

    block: dict[str, Any] = {}
    if request.characters:
        block["method"] = "masked-cross+bounded-self-v1" if regional.BOUNDED_SELF_ATTENTION else "masked-cross-v1"
        block["characters"] = [
            {"description": c.region_prompt(), "mask_ids": sorted(c.mask_ids),
             "references": list(c.references) if ip_identity else [],
             "identity_strength": c.identity_strength if ip_identity and c.references else 0.0,
             "lora": loras[c.name].identity() if loras.get(c.name) else None,  # type: ignore[union-attr]
             "lora_scale": c.lora_scale if c.lora else 0.0}
            for c in request.characters
        ]
    if ip_identity and (request.style_reference or any(c.references for c in request.characters)):
        block["ip_adapter"] = ip_identity
    if ip_identity and request.style_reference:
        block["style"] = {"reference": request.style_reference, "strength": request.style_strength}
    if request.palette_reference:
        block["palette"] = request.palette_reference
    return block
