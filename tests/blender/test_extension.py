"""The extension as a user gets it: built by Blender's builder, installed, enabled, registered."""

from __future__ import annotations

import importlib
import zipfile

import bpy

OPERATORS = ("sync_shots", "add_shot", "jump_to_shot")


def test_built_zip_holds_the_addon_and_engine_but_no_dev_files(extension_zip):
    names = zipfile.ZipFile(extension_zip).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names
    assert any(n.startswith("engine/") for n in names)
    assert not any(n.startswith(("tests/", ".venv", "benchmarks/", ".git/", "deploy/")) for n in names)
    assert "engine/ray/serve.py" in names and "core/generate/all_shots.py" in names


def test_extension_is_enabled_with_scene_settings(vf, scene):
    assert vf.__name__ in bpy.context.preferences.addons
    settings = scene.viewfinder
    for attr in ("model", "controlnet_depth", "controlnet_pose", "style_prompt"):
        assert isinstance(getattr(settings, attr), str)
    assert settings.model.startswith("stable-diffusion")
    for name in OPERATORS:
        assert hasattr(bpy.ops.viewfinder, name)


def test_preferences_have_engine_and_output_settings(vf):
    prefs = bpy.context.preferences.addons[vf.__name__].preferences
    for attr in ("engine_mode", "python_path", "remote_url", "remote_token", "output_dir", "compile_models"):
        assert hasattr(prefs, attr)


def test_register_unregister_twice_leaves_nothing_behind(vf, scene):
    addon_utils = importlib.import_module("addon_utils")
    handlers_before = {name: len(getattr(bpy.app.handlers, name)) for name in ("load_post", "depsgraph_update_post")}
    for _ in range(2):
        addon_utils.disable(vf.__name__, default_set=True)
        assert not hasattr(bpy.types.Scene, "viewfinder")
        assert not hasattr(bpy.types, "VIEWFINDER_PT_shots")
        assert not hasattr(bpy.types, "VIEWFINDER_OT_sync_shots")
        for name, count in handlers_before.items():
            assert len(getattr(bpy.app.handlers, name)) == count - 1, name
        addon_utils.enable(vf.__name__, default_set=True)
        assert hasattr(bpy.types.Scene, "viewfinder")
        assert bpy.ops.viewfinder.sync_shots.poll()
    for name, count in handlers_before.items():
        assert len(getattr(bpy.app.handlers, name)) == count, name


def test_poll_explains_why_add_shot_is_disabled(scene):
    assert not bpy.ops.viewfinder.add_shot.poll()


def test_add_shot_binds_active_camera_at_current_frame(scene):
    from blender_scenes import add_camera

    cam = add_camera(scene, "Cam")
    bpy.context.view_layer.objects.active = cam
    scene.frame_current = 12
    assert bpy.ops.viewfinder.add_shot(name="Opening") == {"FINISHED"}
    marker = scene.timeline_markers["Opening"]
    assert marker.frame == 12 and marker.camera == cam
    assert [s.name for s in scene.viewfinder.shots] == ["Opening"]


def all_operators():
    return sorted(name for name in dir(bpy.ops.viewfinder) if not name.startswith("_"))


def test_every_operator_is_in_a_menu_for_f3_search(vf):
    """F3 searches menus: every operator must be reachable from one, with a description."""
    import inspect

    menus = importlib.import_module(vf.__name__ + ".panels.menus")
    source = inspect.getsource(menus)
    names = all_operators()
    assert len(names) >= 15
    for name in names:
        rna = getattr(bpy.ops.viewfinder, name).get_rna_type()
        assert rna.description and rna.name, name
        assert f'"viewfinder.{name}"' in source, f"viewfinder.{name} is in no menu"
    marker_menu = "TIME_MT_marker" if hasattr(bpy.types, "TIME_MT_marker") else "DOPESHEET_MT_marker"
    for menu in ("TOPBAR_MT_render", "SEQUENCER_MT_strip", marker_menu):
        funcs = getattr(bpy.types, menu)._dyn_ui_initialize()
        assert any(getattr(f, "__module__", "").startswith(vf.__name__) for f in funcs), menu
