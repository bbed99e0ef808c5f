"""The characters block of a shot's request, and reference checks: plain Python."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, load

characters = load("core.jobs.characters")
image_info = load("core.jobs.image_info")
png = load("core.conditioning.png")

LEGEND = {
    "1": {"name": "Building", "kind": "object", "objects": ["Building"]},
    "2": {"name": "Hero", "kind": "character", "objects": ["Hero.Body", "Hero.Hat"]},
    "3": {"name": "Stranger", "kind": "character", "objects": ["Stranger.Body"]},
}


def meta(ids_per_frame=None, shot="Pan"):
    masks = {"legend": LEGEND}
    if ids_per_frame is not None:
        masks["ids_per_frame"] = ids_per_frame
    return {"shot": shot, "frames": [1, 2, 3], "masks": masks}


def write_image(path: Path, width: int, height: int) -> Path:
    png.write_png(path, np.zeros((height, width, 3), np.uint8))
    return path


def source(name="Hero", objects=("Hero.Body",), **kwargs):
    return characters.CharacterSource(name=name, object_names=list(objects), **kwargs)


def test_only_visible_characters_are_sent_with_their_mask_ids_and_reference_hashes(tmp_path):
    ref = write_image(tmp_path / "hero.png", 32, 48)
    sources = [
        source("Hero", ("Hero.Body", "Hero.Hat"), description="a tall woman in a red coat", references=[("hero", ref)],
               identity_strength=0.75, trigger_words="hrw"),
        source("Stranger", ("Stranger.Body",), description="an old man"),
    ]
    ids = {1: {1, 2}, 2: {2}, 3: {1}}  # the stranger never shows
    block = characters.shot_characters(sources, meta(), ids)
    sha = characters.file_sha256(ref)
    assert block.characters == [{
        "name": "Hero", "description": "a tall woman in a red coat", "mask_ids": [2], "references": [sha],
        "identity_strength": 0.75, "lora": None, "lora_scale": 1.0, "trigger_words": "hrw",
    }]
    assert block.blobs == {sha: ref}
    assert block.summary() == [{"name": "Hero", "mask_ids": [2], "armature": ""}]


def test_a_character_that_is_not_visible_is_not_checked(tmp_path):
    # Its reference is missing, but it is not in this shot: it costs nothing and breaks nothing here.
    sources = [source("Stranger", ("Stranger.Body",), references=[("gone", tmp_path / "gone.png")])]
    assert characters.shot_characters(sources, meta(), {1: {1, 2}}).characters == []


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"Character 'Hero': reference 'r' is missing .*choose another image"),
    ("unreadable", r"Character 'Hero': reference 'r' cannot be read \(not a PNG or JPEG image"),
    ("huge", r"Character 'Hero': reference 'r' is 5000×4000 \(20.0 megapixels\), more than the 16.8 allowed"),
])
def test_bad_references_name_the_character_and_the_fix(tmp_path, case, pattern):
    path = tmp_path / "r.png"
    if case == "unreadable":
        path.write_bytes(b"GIF89a not really")
    elif case == "huge":
        # A valid PNG header claiming 5000×4000: refused from the header, before decoding or upload.
        ihdr = struct.pack(">IIBBBBB", 5000, 4000, 8, 2, 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
                         + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    sources = [source(references=[("r", path)])]
    with pytest.raises(characters.CharacterError, match=pattern):
        characters.shot_characters(sources, meta(), {1: {2}})


@pytest.mark.parametrize("name, pattern", [
    ("hero.ckpt", r"Character 'Hero': LoRA hero.ckpt is a pickle file.*convert it to .safetensors"),
    ("hero.bin", r"is a pickle file"),
    ("hero.txt", r"not a .safetensors file"),
    ("missing.safetensors", r"does not exist: choose it again"),
])
def test_pickle_and_missing_loras_are_refused(tmp_path, name, pattern):
    path = tmp_path / name
    if not name.startswith("missing"):
        path.write_bytes(b"x")
    with pytest.raises(characters.CharacterError, match=pattern):
        characters.shot_characters([source(lora=str(path))], meta(), {1: {2}})


def test_a_character_without_renderable_objects_is_named(tmp_path):
    orphan = source("Traveller", (), problem="its armature 'Traveller.Rig' was deleted")
    with pytest.raises(characters.CharacterError,
                       match=r"Character 'Traveller' has no renderable objects \(its armature 'Traveller.Rig' was "
                             r"deleted\): choose its armature"):
        characters.shot_characters([orphan], meta(), {1: {2}})


def test_more_characters_than_the_engine_keeps_apart_is_refused():
    legend = {str(i): {"name": f"C{i}", "objects": [f"C{i}.Body"]} for i in range(1, 7)}
    sources = [source(f"C{i}", (f"C{i}.Body",)) for i in range(1, 7)]
    with pytest.raises(characters.CharacterError, match=r"shows 6 characters \('C1', .*at most 4 apart"):
        characters.shot_characters(sources, {"shot": "Crowd", "masks": {"legend": legend}}, {1: set(range(1, 7))})
    # Four are fine.
    block = characters.shot_characters(sources[:4], {"shot": "Crowd", "masks": {"legend": legend}}, {1: {1, 2, 3, 4}})
    assert [c["mask_ids"] for c in block.characters] == [[1], [2], [3], [4]]


def test_an_object_in_two_characters_is_refused():
    sources = [source("Hero", ("Hero.Body",)), source("Double", ("Hero.Hat",))]  # both in the rig "Hero" (id 2)
    with pytest.raises(characters.CharacterError,
                       match=r"Characters 'Hero' and 'Double' both stand for 'Hero': keep it in one of them"):
        characters.shot_characters(sources, meta(), {1: {2}})


def test_the_limit_matches_the_engine():
    text = (ROOT / "engine" / "contract" / "schema.py").read_text()
    assert f"MAX_CHARACTERS = {characters.MAX_CHARACTERS}" in text


def test_frame_ids_from_meta_or_from_the_mask_pngs(tmp_path):
    assert characters.frame_ids(tmp_path, meta({"1": [1, 2], "2": []})) == {1: {1, 2}, 2: set()}
    (tmp_path / "masks").mkdir()
    for frame, value in ((1, 3), (2, 0), (3, 2)):
        mask = np.zeros((4, 6), np.uint16)
        mask[1:3, 2:4] = value
        png.write_png(tmp_path / "masks" / f"{frame:04d}.png", mask)
    assert characters.frame_ids(tmp_path, meta()) == {1: {0, 3}, 2: {0}, 3: {0, 2}}


def test_image_size_reads_png_and_jpeg_headers(tmp_path):
    assert image_info.image_size(write_image(tmp_path / "a.png", 7, 5)) == (7, 5)
    # A minimal JPEG: SOI, an APP0 segment, SOF0 with 300×200.
    jpeg = (b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
            + b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 200, 300, 1) + b"\x01\x11\x00" + b"\xff\xd9")
    (tmp_path / "b.jpg").write_bytes(jpeg)
    assert image_info.image_size(tmp_path / "b.jpg") == (300, 200)
    (tmp_path / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00")
    with pytest.raises(image_info.ImageHeaderError, match="truncated"):
        image_info.image_size(tmp_path / "c.jpg")


def test_the_block_is_a_valid_engine_request(tmp_path):
    """The add-on's characters block passes the engine's own request model (engine venv only)."""
    pytest.importorskip("pydantic")
    import importlib
    import sys

    sys.path.insert(0, str(ROOT))
    try:
        schema = importlib.import_module("engine.contract.schema")
    finally:
        sys.path.remove(str(ROOT))
    ref = write_image(tmp_path / "hero.png", 16, 16)
    block = characters.shot_characters(
        [source("Hero", ("Hero.Body",), description="a red coat", references=[("hero", ref)], trigger_words="hrw")],
        meta(), {1: {2}})
    body = {"shot": "Pan", "characters": block.characters, "frames": [{"frame": 1, "mask": "0" * 64}]}
    request = schema.JobRequest.model_validate(body)
    (hero,) = request.characters
    assert hero.mask_ids == [2] and hero.references == [characters.file_sha256(ref)]
    assert hero.region_prompt() == "a red coat, hrw"  # trigger words appended once, by the engine
