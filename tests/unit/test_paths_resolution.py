"""Project folders and generation resolution: plain Python, no Blender."""

from __future__ import annotations

import pytest
from helpers import load

paths = load("core.timeline.paths")
resolution = load("core.scene.resolution")


def test_project_next_to_blend(tmp_path):
    project = paths.project_for(str(tmp_path / "film.blend"), "Scene")
    assert project.root == tmp_path / "viewfinder" and not project.temporary
    assert project.conditioning_dir("Shot A") .parent.parent == project.root
    assert paths.frame_name(7) == "0007.png"


def test_folder_names_are_safe_and_distinct():
    assert paths.folder_name("Shot_01") == "Shot_01"
    a, b = paths.folder_name("a/b"), paths.folder_name("a:b")
    assert "/" not in a and ":" not in b and a != b
    assert paths.folder_name("..") not in {"", ".", ".."}


def test_unsaved_blend_uses_a_temporary_project_and_says_so():
    project = paths.project_for("", "Scene")
    assert project.temporary
    assert "temporary" in project.describe()


def test_output_override_relative_to_blend(tmp_path):
    project = paths.project_for(str(tmp_path / "film.blend"), "Scene", "renders")
    assert project.root == tmp_path / "renders" / "film"


def test_next_take_index(tmp_path):
    assert paths.next_take_index(tmp_path / "missing") == 1
    (tmp_path / "001").mkdir()
    (tmp_path / "003").mkdir()
    (tmp_path / "notes").mkdir()
    assert paths.next_take_index(tmp_path) == 4


def test_atomic_write_leaves_no_temp_file(tmp_path):
    target = tmp_path / "a" / "b.bin"
    paths.atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data"
    assert [p.name for p in target.parent.iterdir()] == ["b.bin"]


@pytest.mark.parametrize(
    "res, aspect, long_edge, expected",
    [
        ((1920, 1080), (1, 1), 512, (512, 288)),
        ((1080, 1920), (1, 1), 1024, (576, 1024)),
        ((1000, 1000), (1, 1), 500, (496, 496)),
        ((1920, 1080), (2, 1), 512, (512, 144)),
    ],
)
def test_generation_size_keeps_aspect_and_multiples_of_8(res, aspect, long_edge, expected):
    size = resolution.generation_size(res[0], res[1], aspect[0], aspect[1], long_edge)
    assert size == expected
    assert size[0] % 8 == 0 and size[1] % 8 == 0


def test_generation_size_rejects_nonsense():
    with pytest.raises(ValueError, match="long_edge"):
        resolution.generation_size(1920, 1080, 1, 1, 0)


def scene_of(width, height, long_edge, aspect=(1.0, 1.0), family="SD15"):
    from types import SimpleNamespace

    render = SimpleNamespace(resolution_x=width, resolution_y=height, pixel_aspect_x=aspect[0],
                             pixel_aspect_y=aspect[1])
    return SimpleNamespace(render=render, viewfinder=SimpleNamespace(long_edge=long_edge, model_family=family))


def test_scene_size_reads_the_scene_and_names_the_smallest_long_edge_that_works():
    scene = scene_of(1920, 1080, 512, aspect=(2.0, 1.0))  # anamorphic: displayed 3840x1080
    assert resolution.scene_size(scene) == (512, 144)
    assert resolution.scene_size(scene, 256) == (256, 72)
    wide = scene_of(400, 100, 128)  # 128x32: too thin for the engine
    assert resolution.scene_size(wide) == (128, 32)
    assert resolution.smallest_long_edge(wide) == 240 and resolution.scene_size(wide, 240) == (240, 64)
    assert min(resolution.scene_size(wide, 232)) < resolution.MIN_EDGE  # one step less is too thin


def test_flux_frames_have_sides_in_multiples_of_16():
    """Flux packs 2x2 latents into one token (core/jobs/families.py): 1920x1080 at 1000 gives 1008x560, not 1000x560."""
    assert resolution.scene_size(scene_of(1920, 1080, 1000)) == (1000, 560)
    assert resolution.scene_size(scene_of(1920, 1080, 1000, family="FLUX")) == (1008, 560)
    assert resolution.scene_size(scene_of(1920, 1080, 1000, family="SDXL")) == (1000, 560)
