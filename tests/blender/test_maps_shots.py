"""Normal, line-art and seg maps through a shot's settings (issue 23): classes, meta.json, the request, preview.

Segmentation: exact class indices per object (its own class, its collection's, the guess, the default
with a warning), and the exact colours the engine gives them with controlnet-aux's palette (read in the
engine venv, never held by the add-on). meta.json describes each map. The request carries the maps by
sha256 with their weights and ranges as the job contract says, and only when the film names a net;
a shot with the three weights at 0 renders and sends what it did before.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import bpy
import numpy as np
import pytest
from blender_scenes import add_camera, bind_marker, engine_python
from cast_scenes import build_character, collect


def seg_scene(tmp_path: Path) -> bpy.types.Scene:
    """A tree, a house in a "Houses" collection, a rock the user calls a car, an unnamed cube, a person,
    a world (the background is sky); shot "Street" sees them all."""
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.world = bpy.data.worlds.new("World")
    scene.render.resolution_x, scene.render.resolution_y = 128, 72
    scene.frame_start, scene.frame_end = 1, 2
    houses = bpy.data.collections.new("Houses")
    scene.collection.children.link(houses)
    houses.viewfinder_seg_class = "building"
    for name, x in (("Tree", -4.5), ("Shed", -1.5), ("Rock", 1.5), ("Cube.004", 4.5)):
        bpy.ops.mesh.primitive_cube_add(size=1.6, location=(x, 0.0, 0.8))
        bpy.context.object.name = name
    shed = bpy.data.objects["Shed"]
    scene.collection.objects.unlink(shed)
    houses.objects.link(shed)
    bpy.data.objects["Rock"].viewfinder_seg_class = "car"
    build_character(scene, "Walker", 0.0).location.y = -2.0
    camera = add_camera(scene, "Cam", location=(0.0, -14.0, 1.5))
    bind_marker(scene, "Street", 1, camera)
    scene.viewfinder.long_edge = 128
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "street.blend"))
    return scene


EXPECTED = {"Tree": (4, "tree", "guess"), "Shed": (1, "building", "collection"), "Rock": (20, "car", "user"),
            "Cube.004": (0, "wall", "default"), "Walker.Body": (12, "person", "guess")}


def palette() -> list[list[int]] | None:
    """controlnet-aux's ADE20K palette, read in the engine venv (the add-on never holds it)."""
    python = engine_python()
    if python is None:
        return None
    code = "import json; from controlnet_aux.util import ade_palette; print(json.dumps(ade_palette()))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None


def test_seg_class_per_object_and_the_engines_colours(vfmod: Any, tmp_path: Path) -> None:
    scene = seg_scene(tmp_path)
    shot = scene.viewfinder.shots["Street"]
    shot.seg_weight = 1.0
    job = collect(scene, vfmod, "Street")
    meta = json.loads((job.conditioning_dir / "meta.json").read_text())
    block = meta["maps"]["seg"]
    for name, expected in EXPECTED.items():
        assert tuple(block["classes"][name]) == expected, name
    assert block["background"] == [2, "sky", "world"]
    assert any("'Cube.004'" in w and "default" in w for w in meta["warnings"] + job.warnings)
    # Every pixel of an object carries its class: the masks say whose pixel it is.
    png = vfmod("core.conditioning.png")
    seg_map = png.read_png(job.conditioning_dir / "seg" / "0001.png")
    masks = png.read_png(job.conditioning_dir / "masks" / "0001.png")
    legend = {entry["name"]: int(key) for key, entry in meta["masks"]["legend"].items()}
    owners = {"Walker.Body": "Walker"}
    for name, (index, _label, _source) in EXPECTED.items():
        pixels = masks == legend[owners.get(name, name)]
        assert pixels.sum() > 20 and set(np.unique(seg_map[pixels])) == {index}, name
    assert set(np.unique(seg_map[masks == 0])) == {2}
    # The Object Properties panel shows the class the render uses, and where it comes from.
    in_use = vfmod("panels.seg").class_in_use
    assert [(c.label, c.source) for c in map(in_use, (bpy.data.objects["Shed"], bpy.data.objects["Rock"]))] == [
        ("building", "collection"), ("car", "user")]
    colours = palette()
    if colours is None:
        pytest.skip("no engine venv with controlnet-aux to colour the map with")
    coloured = np.array(colours, dtype=np.uint8)[np.minimum(seg_map, 149)]
    assert coloured[masks == legend["Walker"]].tolist()[0] == [150, 5, 61]  # ADE20K person
    assert coloured[masks == legend["Tree"]].tolist()[0] == [4, 200, 3]  # ADE20K tree
    assert coloured[masks == 0].tolist()[0] == [6, 230, 230]  # ADE20K sky


def test_meta_and_request_carry_every_map_as_the_contract_says(vfmod: Any, tmp_path: Path) -> None:
    scene = seg_scene(tmp_path)
    settings = scene.viewfinder
    settings.controlnet_lineart = "lllyasviel/control_v11p_sd15_lineart"  # a preset: it follows the form
    shot = settings.shots["Street"]
    shot.normal_weight, shot.lineart_weight, shot.seg_weight = 0.8, 1.2, 0.5
    shot.lineart_form, shot.line_weight = "MLSD", 2
    shot.use_lineart_range, shot.lineart_start, shot.lineart_end = True, 0.1, 0.7
    job = collect(scene, vfmod, "Street")
    meta = json.loads((job.conditioning_dir / "meta.json").read_text())
    assert meta["maps"]["lineart"] == {
        "path": "lineart/NNNN.png", "encoding": "png 8-bit grayscale, 255 lines on 0", "form": "mlsd",
        "line_weight": 2, "crease_angle_deg": 30.0,
        "sources": "object boundaries (Object Index), depth steps (Z), creases (Normal)", "frames": [1, 2]}
    assert meta["maps"]["normal"]["convention"].startswith("ControlNet 1.1 normalbae")
    assert meta["maps"]["normal"]["frames"] == [1, 2] and meta["maps"]["seg"]["encoding"].startswith("png 8-bit")
    body = job.request.to_dict()
    assert body["models"]["controlnet_lineart"] == "lllyasviel/control_v11p_sd15_mlsd"
    assert body["models"]["controlnet_normal"] == "lllyasviel/control_v11p_sd15_normalbae"
    assert (body["normal_weight"], body["lineart_weight"], body["seg_weight"]) == (0.8, 1.2, 0.5)
    assert body["control_ranges"] == {"lineart": [0.1, 0.7]}
    request, generate = vfmod("core.jobs.request"), vfmod("core.generate.shot")
    paths = {p for maps in job.maps.values() for p in maps.values() if p is not None}
    hashes = {p: generate.file_sha256(p) for p in paths}
    frames = request.frame_entries(job.frames, job.maps, hashes, job.frame_values)
    for entry in frames:
        for kind in ("normal", "lineart", "seg"):
            expected = job.conditioning_dir / kind / f"{entry['frame']:04d}.png"
            assert entry[kind] == generate.file_sha256(expected)
    schema = engine_schema()
    if schema is not None and "normal_weight" in schema.JobRequest.model_fields:
        parsed = schema.JobRequest.model_validate(job.request.body(frames))
        assert parsed.control_ranges == {"lineart": (0.1, 0.7)} and parsed.frames[0].seg == frames[0]["seg"]


def engine_schema() -> Any:
    import importlib
    import sys

    from cast_scenes import ROOT

    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module("engine.contract.schema")
    except ImportError:  # no pydantic in this venv
        return None
    finally:
        sys.path.remove(str(ROOT))


def test_weights_at_zero_render_and_send_what_they_did_before(vfmod: Any, tmp_path: Path) -> None:
    scene = seg_scene(tmp_path)
    job = collect(scene, vfmod, "Street")
    meta = json.loads((job.conditioning_dir / "meta.json").read_text())
    assert "maps" not in meta and not (job.conditioning_dir / "normal").exists()
    body = job.request.to_dict()
    for key in ("normal_weight", "lineart_weight", "seg_weight", "control_ranges"):
        assert key not in body
    assert set(body["models"]) == {"base", "controlnet_depth", "controlnet_pose", "lora", "lora_scale"}
    assert all(set(maps) <= {"depth", "pose", "flow"} for maps in job.maps.values())


def test_a_map_without_a_net_is_rendered_not_sent(vfmod: Any, tmp_path: Path) -> None:
    scene = seg_scene(tmp_path)
    scene.viewfinder.controlnet_normal = ""
    shot = scene.viewfinder.shots["Street"]
    shot.normal_weight = 1.0
    job = collect(scene, vfmod, "Street")
    assert (job.conditioning_dir / "normal" / "0001.png").is_file()
    assert all("normal" not in maps for maps in job.maps.values())
    assert "normal_weight" not in job.request.to_dict()
    assert any("Normal maps are rendered" in w and "'Street'" in w for w in job.warnings)


def test_an_animated_weight_sends_the_map_only_where_it_is_above_zero(vfmod: Any, tmp_path: Path) -> None:
    scene = seg_scene(tmp_path)
    scene.frame_end = 3
    shot = scene.viewfinder.shots["Street"]
    shot.lineart_weight = 0.0
    shot.keyframe_insert("lineart_weight", frame=2)
    shot.lineart_weight = 1.0
    shot.keyframe_insert("lineart_weight", frame=3)
    shot.lineart_weight = 0.0  # zero now: the curve decides, not the current value
    job = collect(scene, vfmod, "Street")
    assert [job.maps[f]["lineart"] is not None for f in (1, 2, 3)] == [False, False, True]
    assert job.request.to_dict()["lineart_weight"] == 0.0 and job.frame_values[3]["lineart_weight"] == 1.0


def test_preview_shows_every_map(vfmod: Any, tmp_path: Path) -> None:
    scene = seg_scene(tmp_path)
    shot = scene.viewfinder.shots["Street"]
    shot.normal_weight = shot.lineart_weight = shot.seg_weight = 1.0
    assert bpy.ops.viewfinder.render_conditioning(shot="Street") == {"FINISHED"}
    assert bpy.ops.viewfinder.preview_conditioning(shot="Street", kind="ALL") == {"FINISHED"}
    editor = scene.sequence_editor
    strips = editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all
    shown = {s.get("viewfinder_control") for s in strips if s.get("viewfinder_kind") == "control"}
    assert shown == {"DEPTH", "POSE", "NORMAL", "LINEART", "SEG"}
    channels = {s.channel for s in strips if s.get("viewfinder_kind") == "control"}
    assert len(channels) == 5
    seg_strip = next(s for s in strips if s.get("viewfinder_control") == "SEG")
    assert "seg-preview" in seg_strip.directory  # preview colours, never the class map itself
    shot.normal_weight = 0.0
    assert bpy.ops.viewfinder.render_conditioning(shot="Street") == {"FINISHED"}
    with pytest.raises(RuntimeError, match="Normal Weight"):
        bpy.ops.viewfinder.preview_conditioning(shot="Street", kind="NORMAL")


def test_own_ranges_are_animatable_and_checked(vfmod: Any, tmp_path: Path) -> None:
    scene = seg_scene(tmp_path)
    scene.frame_end = 3
    shot = scene.viewfinder.shots["Street"]
    shot.normal_weight = 1.0
    shot.use_normal_range, shot.use_depth_range = True, True
    shot.depth_start, shot.depth_end = 0.0, 0.5
    shot.normal_end = 0.6
    shot.keyframe_insert("normal_end", frame=1)
    shot.normal_end = 0.9
    shot.keyframe_insert("normal_end", frame=3)
    job = collect(scene, vfmod, "Street")
    assert job.request.to_dict()["control_ranges"] == {"depth": [0.0, 0.5], "normal": [0.0, 0.6]}
    assert job.frame_values[3]["control_ranges"] == {"normal": [0.0, 0.9]}
    assert "control_ranges" in job.frame_values[2] and "depth" not in job.frame_values[2]["control_ranges"]
    shot.normal_start = 0.95  # above its end on every frame: refused with the map named
    with pytest.raises(vfmod("core.generate.shot").GenerationError, match="Normal Start is not below Normal End"):
        collect(scene, vfmod, "Street")


def test_generate_reports_the_maps_bad_input_rendered_and_reused(vfmod: Any, tmp_path: Path) -> None:
    """The maps' bad-input messages (an object with no class, a modifier changing topology) reach Generate's
    reports (the job's warnings), not only meta.json: when the maps render and when the maps on disk are reused."""
    scene = seg_scene(tmp_path)
    bpy.ops.mesh.primitive_uv_sphere_add(segments=16, ring_count=8, radius=0.6, location=(0.0, 0.0, 3.0))
    growing = bpy.context.object
    growing.name = "Growing"
    build = growing.modifiers.new("Build", "BUILD")
    build.frame_start, build.frame_duration = 1, 3
    scene.viewfinder.shots["Street"].seg_weight = 1.0
    first = collect(scene, vfmod, "Street")
    meta_file = first.conditioning_dir / "meta.json"
    written = meta_file.stat().st_mtime_ns
    again = collect(scene, vfmod, "Street")
    assert meta_file.stat().st_mtime_ns == written  # the maps on disk were reused, not rendered again
    for job in (first, again):
        assert any("'Cube.004'" in w and "default" in w for w in job.warnings), job.warnings
        assert any("'Growing'" in w and "topology" in w and "'Build'" in w for w in job.warnings), job.warnings
        assert len(job.warnings) == len(set(job.warnings))  # each said once


class Recording:
    """A stand-in for a panel's layout: what it draws, as (kind, property name or label text, icon)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def prop(self, data: Any, name: str, **_: Any) -> None:
        self.calls.append(("prop", f"{data.name}.{name}", ""))

    def label(self, text: str = "", icon: str = "NONE", **_: Any) -> None:
        self.calls.append(("label", text, icon))


def test_the_properties_panels_override_the_class_per_object_and_per_collection(vfmod: Any, tmp_path: Path) -> None:
    """Object Properties ▸ Viewfinder and Collection Properties ▸ Viewfinder: the field, and for an object the
    class in use and where it comes from (the default flagged)."""
    from types import SimpleNamespace

    seg_scene(tmp_path)
    panels = vfmod("panels.seg")
    houses = bpy.data.collections["Houses"]
    drawn = {}
    for name in ("Shed", "Rock", "Tree", "Cube.004", "Walker.Body"):
        context = SimpleNamespace(object=bpy.data.objects[name], collection=houses)
        assert panels.VIEWFINDER_PT_object_seg.poll(context)
        layout = Recording()
        panels.VIEWFINDER_PT_object_seg.draw(SimpleNamespace(layout=layout), context)
        drawn[name] = layout.calls
    assert drawn["Shed"] == [("prop", "Shed.viewfinder_seg_class", ""),
                             ("label", "Segmentation: building (from its collection)", "INFO")]
    assert drawn["Rock"][1] == ("label", "Segmentation: car (set here)", "INFO")
    assert drawn["Tree"][1] == ("label", "Segmentation: tree (guessed from its name or shape)", "INFO")
    assert drawn["Walker.Body"][1] == ("label", "Segmentation: person (guessed from its name or shape)", "INFO")
    assert drawn["Cube.004"][1] == ("label", "Segmentation: wall (the default: set one)", "ERROR")
    context = SimpleNamespace(object=None, collection=houses)
    assert panels.VIEWFINDER_PT_collection_seg.poll(context)
    layout = Recording()
    panels.VIEWFINDER_PT_collection_seg.draw(SimpleNamespace(layout=layout), context)
    assert layout.calls[0] == ("prop", "Houses.viewfinder_seg_class", "")
    # Set in the panels' fields: the object's own class wins over its collection's.
    bpy.data.objects["Shed"].viewfinder_seg_class = "tower"
    assert panels.class_in_use(bpy.data.objects["Shed"]) == vfmod("core.conditioning.seg").SegClass(84, "tower", "user")
    houses.viewfinder_seg_class = "house"
    assert panels.class_in_use(bpy.data.objects["Shed"]).label == "tower"
    bpy.data.objects["Shed"].viewfinder_seg_class = ""
    assert panels.class_in_use(bpy.data.objects["Shed"]) == vfmod("core.conditioning.seg").SegClass(25, "house",
                                                                                                     "collection")
