"""The character bible in real Blender: stored in the .blend, bound to objects, sent per shot.

Tests here need no engine: `collect_shot` renders the control maps and builds
the request the engine would get. test_characters_engine.py runs them through
a real engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import bpy
import pytest
from cast_scenes import add_reference, build_cast, build_character, collect, save_png


def test_add_character_from_selection_takes_the_rig_and_what_it_deforms(scene, vfmod):
    hero = build_character(scene, "Hero", 0.0)
    prop = bpy.data.objects.new("Hero.Hat", bpy.data.meshes.new("Hat"))
    scene.collection.objects.link(prop)
    bpy.ops.object.select_all(action="DESELECT")
    bpy.context.view_layer.objects.active = None
    assert not bpy.ops.viewfinder.add_character.poll()  # nothing selected
    hero.select_set(True)
    prop.select_set(True)
    bpy.context.view_layer.objects.active = hero
    assert bpy.ops.viewfinder.add_character() == {"FINISHED"}
    (character,) = scene.viewfinder.characters
    assert character.name == "Hero" and character.armature == hero
    assert [r.object.name for r in character.extra_objects] == ["Hero.Hat"]
    objects = vfmod("core.scene.characters").character_objects(scene, character)
    assert [o.name for o in objects] == ["Hero.Body", "Hero.Hat"]
    # The same rig twice is refused, naming the character it already is.
    with pytest.raises(RuntimeError, match="'Hero' is already the character 'Hero'"):
        bpy.ops.viewfinder.add_character()
    assert len(scene.viewfinder.characters) == 1


def test_bible_survives_save_reload_and_renames_and_a_deleted_armature_is_named(tmp_path, vfmod):
    scene = build_cast(tmp_path)
    ref = save_png(tmp_path / "hero.png", 8, 8)
    hero = scene.viewfinder.characters["Hero"]
    add_reference(hero, ref)
    hero.lora, hero.lora_scale, hero.trigger_words, hero.identity_strength = "//hero.safetensors", 0.7, "hrw", 0.9
    scene.viewfinder.style_strength = 0.3
    bpy.ops.wm.save_mainfile()
    path = bpy.data.filepath
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=path)
    scene = bpy.context.scene
    hero = scene.viewfinder.characters["Hero"]
    assert [c.name for c in scene.viewfinder.characters] == ["Hero", "Stranger"]
    assert hero.armature == bpy.data.objects["Hero"]
    assert hero.description == "a tall woman in a red coat"
    assert [Path(bpy.path.abspath(r.image.filepath)) for r in hero.references] == [ref]
    assert (hero.lora, round(hero.lora_scale, 3), hero.trigger_words, round(hero.identity_strength, 3)) == (
        "//hero.safetensors", 0.7, "hrw", 0.9)
    assert round(scene.viewfinder.style_strength, 3) == 0.3

    # Renames follow: the pointer holds the object, not its name.
    bpy.data.objects["Hero"].name = "Heroine"
    bpy.data.objects["Hero.Body"].name = "Heroine.Body"
    assert hero.armature.name == "Heroine"
    objects = vfmod("core.scene.characters").character_objects(scene, hero)
    assert [o.name for o in objects] == ["Heroine.Body"]

    # Deleting the armature: the message names the character and the rig it had.
    bpy.data.objects.remove(bpy.data.objects["Stranger"])
    scene.viewfinder.characters["Hero"].lora = ""
    with pytest.raises(Exception, match=r"Character 'Stranger' has no renderable objects \(its armature "
                                        r"'Stranger' was deleted\): choose its armature"):
        collect(scene, vfmod, "Both")


def test_request_for_a_two_character_shot(tmp_path, vfmod):
    scene = build_cast(tmp_path)
    ref = save_png(tmp_path / "hero.png", 12, 10)
    add_reference(scene.viewfinder.characters["Hero"], ref)
    scene.viewfinder.characters["Hero"].trigger_words = "hrw"
    style = save_png(tmp_path / "style.png", 9, 9, colour=(0.1, 0.2, 0.9))
    scene.viewfinder.style_reference = bpy.data.images.load(str(style))
    # A palette made in Blender, never saved: written once under the project's references/ folder.
    palette = bpy.data.images.new("Palette", 4, 2)
    palette.pixels.foreach_set([0.9, 0.5, 0.1, 1.0] * 8)
    scene.viewfinder.palette_reference = palette
    characters = vfmod("core.jobs.characters")

    job = collect(scene, vfmod, "Both")
    meta = json.loads((job.conditioning_dir / "meta.json").read_text())
    legend = meta["masks"]["legend"]
    ids = {entry["name"]: int(key) for key, entry in legend.items()}
    hero_sha, style_sha = characters.file_sha256(ref), characters.file_sha256(style)
    assert job.request.to_dict()["characters"] == [
        {"name": "Hero", "description": "a tall woman in a red coat", "mask_ids": [ids["Hero"]],
         "references": [hero_sha], "identity_strength": 0.6, "lora": None, "lora_scale": 1.0, "trigger_words": "hrw"},
        {"name": "Stranger", "description": "an old man in a grey suit", "mask_ids": [ids["Stranger"]],
         "references": [], "identity_strength": 0.6, "lora": None, "lora_scale": 1.0, "trigger_words": ""},
    ]
    assert job.request.to_dict()["style_reference"] == style_sha and job.request.to_dict()["style_strength"] == 0.5
    palette_sha = job.request.to_dict()["palette_reference"]
    palette_file = job.blobs[palette_sha]
    assert palette_file.parent == tmp_path / "viewfinder" / "references"
    assert characters.file_sha256(palette_file) == palette_sha
    assert vfmod("core.conditioning.png").read_png(palette_file)[0, 0].tolist() == [230, 128, 26]
    assert job.models["ip_adapter"] == scene.viewfinder.ip_adapter
    assert job.blobs == {hero_sha: ref, style_sha: style, palette_sha: palette_file}
    assert job.characters == [{"name": "Hero", "mask_ids": [ids["Hero"]], "armature": "Hero"},
                              {"name": "Stranger", "mask_ids": [ids["Stranger"]], "armature": "Stranger"}]
    # Every frame sends its mask, and both characters really are in it.
    for frame in job.frames:
        mask = job.maps[frame]["mask"]
        assert mask == job.conditioning_dir / "masks" / f"{frame:04d}.png"
        present = set(meta["masks"]["ids_per_frame"][str(frame)])
        assert {ids["Hero"], ids["Stranger"]} <= present

    # The close shot sees only the hero: the stranger is not sent, costs nothing.
    job = collect(scene, vfmod, "Hero")
    assert [c["name"] for c in job.request.to_dict()["characters"]] == ["Hero"]
    assert job.blobs == {hero_sha: ref, style_sha: style, palette_sha: palette_file}

    # Without an IP-Adapter no reference is sent (the engine could not use it).
    scene.viewfinder.ip_adapter = ""
    job = collect(scene, vfmod, "Hero")
    assert job.request.to_dict()["characters"][0]["references"] == [] and "style_reference" not in job.request.to_dict()
    assert "ip_adapter" not in job.models and job.blobs == {palette_sha: palette_file}
    assert job.request.to_dict()["palette_reference"] == palette_sha  # the palette needs no IP-Adapter


def test_a_video_shot_takes_the_bible_references_of_its_characters(tmp_path, vfmod):
    """VIDEO models take whole-frame reference images: a shot without its own gets its characters' ones."""
    scene = build_cast(tmp_path)
    ref = save_png(tmp_path / "hero.png", 12, 10)
    add_reference(scene.viewfinder.characters["Hero"], ref)
    palette = bpy.data.images.new("Palette", 4, 2)
    scene.viewfinder.palette_reference = palette
    scene.viewfinder.shots["Both"].generator = "VIDEO"
    hero_sha = vfmod("core.jobs.characters").file_sha256(ref)

    job = collect(scene, vfmod, "Both")
    assert job.request.to_dict()["generator"] == "VIDEO"
    assert job.request.to_dict()["video"]["references"] == [hero_sha]
    assert job.uploads == [ref]
    # No regional block for a video model: no characters, masks, film-look fields or IP-Adapter.
    for key in ("characters", "style_reference", "palette_reference"):
        assert key not in job.request.to_dict()
    assert "ip_adapter" not in job.models and job.blobs == {}
    assert all("mask" not in maps for maps in job.maps.values())
    # The take still records who is in it, for the identity metric.
    assert [c["name"] for c in job.characters] == ["Hero", "Stranger"]

    # The shot's own reference image wins over the bible's.
    own = save_png(tmp_path / "own.png", 8, 8, colour=(0.3, 0.6, 0.2))
    scene.viewfinder.shots["Both"].reference_image = str(own)
    job = collect(scene, vfmod, "Both")
    assert job.request.to_dict()["video"]["references"] == [vfmod("core.jobs.characters").file_sha256(own)]
    assert job.uploads == [own]


def test_a_film_without_a_bible_sends_the_request_it_sent_before(tmp_path, vfmod):
    scene = build_cast(tmp_path)
    scene.viewfinder.characters.clear()
    job = collect(scene, vfmod, "Both")
    for key in ("characters", "style_reference", "palette_reference", "style_strength"):
        assert key not in job.request.to_dict()
    assert "ip_adapter" not in job.models and job.blobs == {}
    assert all("mask" not in maps for maps in job.maps.values())


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"Shot 'Both': Character 'Hero': reference 'hero.png' is missing"),
    ("huge", r"Character 'Hero': reference 'huge' is 4200×4200 \(17.6 megapixels\), more than the 16.8 allowed"),
    ("pickle", r"Character 'Hero': LoRA hero.ckpt is a pickle file, which can run code when loaded: convert it"),
    ("crowd", r"^Shot 'Both' shows 5 characters \('Hero', 'Stranger', 'Extra1', 'Extra2', 'Extra3'\); the engine "
              r"keeps at most 4"),
])
def test_bad_input_is_named_before_anything_is_sent(tmp_path, vfmod, case, pattern):
    scene = build_cast(tmp_path)
    hero = scene.viewfinder.characters["Hero"]
    if case == "missing":
        path = save_png(tmp_path / "hero.png", 8, 8)
        add_reference(hero, path)
        path.unlink()
    elif case == "huge":
        hero.references.add().image = bpy.data.images.new("huge", 4200, 4200)
    elif case == "pickle":
        (tmp_path / "hero.ckpt").write_bytes(b"\x80\x04")
        hero.lora = "//hero.ckpt"
    elif case == "crowd":
        for i in (1, 2, 3):
            rig = build_character(scene, f"Extra{i}", -1.5 + 1.0 * i)
            extra = scene.viewfinder.characters.add()
            extra.name, extra.armature = rig.name, rig
    with pytest.raises(vfmod("core.generate.shot").GenerationError, match=pattern):
        collect(scene, vfmod, "Both")


def test_reference_operators(tmp_path, vfmod):
    scene = build_cast(tmp_path)
    for name in ("VIEWFINDER_PT_characters", "VIEWFINDER_PT_film_look", "VIEWFINDER_UL_characters",
                 "VIEWFINDER_UL_references", "VIEWFINDER_MT_characters"):
        assert hasattr(bpy.types, name), name
    path = save_png(tmp_path / "hero.png", 8, 8)
    scene.viewfinder.active_character_index = 0
    assert bpy.ops.viewfinder.add_reference(filepath=str(path)) == {"FINISHED"}
    assert bpy.ops.viewfinder.add_reference(filepath=str(path)) == {"FINISHED"}  # no duplicate
    hero = scene.viewfinder.characters["Hero"]
    assert [r.image.name for r in hero.references] == ["hero.png"]
    with pytest.raises(RuntimeError, match=r"Character 'Hero': .*nope.png does not exist"):
        bpy.ops.viewfinder.add_reference(filepath=str(tmp_path / "nope.png"))
    assert bpy.ops.viewfinder.remove_reference() == {"FINISHED"}
    assert len(hero.references) == 0
    assert bpy.ops.viewfinder.remove_character(character="Stranger") == {"FINISHED"}
    assert [c.name for c in scene.viewfinder.characters] == ["Hero"]
    assert bpy.ops.viewfinder.remove_character() == {"FINISHED"}
    assert not bpy.ops.viewfinder.remove_reference.poll()
    assert not bpy.ops.viewfinder.make_reference_sheet.poll()
