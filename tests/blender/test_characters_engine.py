"""The character bible through a real engine with tiny random-weight models (IP-Adapter and image encoder too)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import bpy
import pytest
from blender_scenes import needs_engine
from cast_scenes import add_reference, build_cast, save_png

pytestmark = needs_engine()


def take_infos(scene):
    out = {}
    for shot in scene.viewfinder.shots:
        folder = Path(bpy.path.abspath("//viewfinder")) / shot.name / "takes"
        out[shot.name] = sorted(json.loads((p / "take.json").read_text())["take"] for p in folder.iterdir()
                                if (p / "take.json").is_file()) if folder.is_dir() else []
    return out


def test_changing_one_characters_reference_regenerates_only_its_shots(tmp_path, tiny_models):
    scene = build_cast(tmp_path, tiny_models)
    add_reference(scene.viewfinder.characters["Hero"], save_png(tmp_path / "hero.png", 16, 16))
    add_reference(scene.viewfinder.characters["Stranger"], save_png(tmp_path / "stranger.png", 16, 16, (0.1, 0.5, 0.1)))
    assert bpy.ops.viewfinder.generate(shot="") == {"FINISHED"}
    assert take_infos(scene) == {"Both": ["001"], "Hero": ["001"]}
    both = json.loads((tmp_path / "viewfinder" / "Both" / "takes" / "001" / "take.json").read_text())
    assert both["complete"] and sorted(c["name"] for c in both["characters"]) == ["Hero", "Stranger"]
    hero_only = json.loads((tmp_path / "viewfinder" / "Hero" / "takes" / "001" / "take.json").read_text())
    assert [c["name"] for c in hero_only["characters"]] == ["Hero"]

    # The stranger's reference changes: only the shot it appears in is generated again.
    stranger = scene.viewfinder.characters["Stranger"]
    stranger.references[0].image = bpy.data.images.load(str(save_png(tmp_path / "stranger2.png", 16, 16, (0.9, 0.9, 0.1))))
    assert bpy.ops.viewfinder.generate(shot="") == {"FINISHED"}
    assert take_infos(scene) == {"Both": ["001", "002"], "Hero": ["001"]}

    # The hero's description changes: both shots show the hero, both are generated again.
    scene.viewfinder.characters["Hero"].description = "a short man in a yellow raincoat"
    assert bpy.ops.viewfinder.generate(shot="") == {"FINISHED"}
    assert take_infos(scene) == {"Both": ["001", "002", "003"], "Hero": ["001", "002"]}


def test_a_deleted_armature_stops_generation_with_the_characters_name(tmp_path, tiny_models):
    scene = build_cast(tmp_path, tiny_models)
    bpy.data.objects.remove(bpy.data.objects["Stranger"])
    with pytest.raises(RuntimeError, match=r"Character 'Stranger' has no renderable objects \(its armature "
                                           r"'Stranger' was deleted\)"):
        bpy.ops.viewfinder.generate(shot="Hero")
    assert take_infos(scene)["Hero"] == []


def _safetensors(path: Path, tensors: dict[str, tuple[int, ...]]) -> Path:
    """A .safetensors file of zero-filled float16 tensors, written by hand (no torch in Blender)."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 2
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\x00" * offset)
    return path


def test_a_lora_for_another_model_family_is_refused_naming_the_character(tmp_path, tiny_models):
    scene = build_cast(tmp_path, tiny_models)
    # SDXL-style keys and widths: not for this SD 1.5 model.
    _safetensors(tmp_path / "sdxl-lora.safetensors", {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.lora_down.weight": (4, 640),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.lora_up.weight": (640, 4),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 1280),
    })
    scene.viewfinder.characters["Hero"].lora = str(tmp_path / "sdxl-lora.safetensors")
    with pytest.raises(RuntimeError, match=r"Character 'Hero'.*LoRA"):
        bpy.ops.viewfinder.generate(shot="Hero")
    assert take_infos(scene)["Hero"] == [] or not json.loads(
        (tmp_path / "viewfinder" / "Hero" / "takes" / "001" / "take.json").read_text())["complete"]


def test_reference_sheet_makes_three_views_and_keeps_the_chosen_one(tmp_path, tiny_models):
    scene = build_cast(tmp_path, tiny_models)
    scene.viewfinder.active_character_index = list(scene.viewfinder.characters.keys()).index("Hero")
    hero = scene.viewfinder.characters["Hero"]
    rest_before = bpy.data.objects["Hero"].data.pose_position
    assert bpy.ops.viewfinder.make_reference_sheet() == {"FINISHED"}
    assert [item.image.name for item in hero.sheet] == ["Hero front", "Hero three-quarter", "Hero side"]
    for item in hero.sheet:
        path = Path(bpy.path.abspath(item.image.filepath))
        assert path.is_file() and path.parent.parent.parent == tmp_path / "viewfinder" / "characters" / "Hero"
        assert tuple(item.image.size) == (64, 64)
    # The maps were drawn from the rig: each view has a pose map, and the views differ.
    conditioning = tmp_path / "viewfinder" / "characters" / "Hero" / "conditioning"
    meta = json.loads((conditioning / "meta.json").read_text())
    assert meta["pose_frames"] == {"1": True, "2": True, "3": True}
    depth = [(conditioning / "depth" / f"{f:04d}.png").read_bytes() for f in (1, 2, 3)]
    assert len(set(depth)) == 3
    # Nothing of the throwaway scene stays; the rig's pose setting is back.
    assert [s.name for s in bpy.data.scenes] == [scene.name]
    assert "Viewfinder Sheet Camera" not in bpy.data.objects
    assert bpy.data.objects["Hero"].data.pose_position == rest_before
    # Keep the three-quarter view.
    assert bpy.ops.viewfinder.add_reference(image="Hero three-quarter") == {"FINISHED"}
    assert [r.image.name for r in hero.references] == ["Hero three-quarter"]
    assert [item.image.name for item in hero.sheet] == ["Hero front", "Hero side"]
