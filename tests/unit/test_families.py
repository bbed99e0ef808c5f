"""The add-on's copy of the model families (core/jobs/families.py) against the engine's table, and what it sends."""

from __future__ import annotations

import importlib
import sys
from types import SimpleNamespace

import pytest
from helpers import ROOT, load

families = load("core.jobs.families")


def engine_families():
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module("engine.models.families")
    finally:
        sys.path.remove(str(ROOT))


def test_the_add_on_copy_is_the_engines_table():
    """Names, sizes, side multiples, maps, union examples and every reason a feature is unavailable."""
    pytest.importorskip("pydantic")  # the engine package's schema; every venv `make setup` builds has it
    table = engine_families().FAMILIES
    assert sorted(families.REQUEST_NAMES.values()) == sorted(table)
    for name, fam in table.items():
        assert families.DEFAULT_SIZE[name] == fam.default_size
        assert families.SIDE_MULTIPLE[name] == fam.side_multiple
        assert families.MAPS[name] == fam.maps
        assert families.UNION_EXAMPLE[name] == fam.union_example
        assert families.WHY_NOT[name] == fam.why_not
    assert set(families.CAPABILITY_LABELS) == set(engine_families().CAPABILITIES)


def settings(family="SD15", union="", config=""):
    return SimpleNamespace(model_family=family, controlnet_union=union, base_config=config)


def test_what_the_family_settings_send():
    shot_job = load("core.generate.shot_job")
    assert shot_job.family_models(settings()) == {}  # SD 1.5: the request and take.json exactly as before
    assert shot_job.family_models(settings("SD15", union="x/union")) == {}  # SD 1.5 has no union net
    assert shot_job.family_models(settings("SDXL", union="xinsir/controlnet-union-sdxl-1.0")) == {
        "family": "sdxl", "controlnet_union": "xinsir/controlnet-union-sdxl-1.0"}
    assert shot_job.family_models(settings("FLUX", config="/m/flux")) == {"family": "flux", "base_config": "/m/flux"}


def test_unavailable_features_come_with_their_reasons():
    assert families.unavailable("sdxl") == []
    flux = dict(families.unavailable("flux"))
    assert list(flux) == ["One ControlNet per map", "Characters", "Reference images", "Draft tier",
                          "Single-file checkpoints"]
    assert "joint" in flux["Characters"]
    assert all(len(line) <= 52 for line in families.wrap(flux["Characters"]))


def test_what_a_panel_shows_in_place_of_a_feature():
    """``why_not``: "" where the family has the feature, else the engine's reason; ``map_why_not``: the maps a
    family's ControlNets have no mode for (Flux.1's union: normal, seg), named together."""
    assert [families.why_not(f, "regional_characters") for f in ("sd15", "sdxl")] == ["", ""]
    assert families.why_not("flux", "regional_characters") == families.WHY_NOT["flux"]["regional_characters"]
    assert families.why_not("flux", "lora") == ""
    assert families.why_not("sd15", "union_controlnet").startswith("no union")
    assert [families.map_why_not(f, *families.MAPS["sd15"]) for f in ("sd15", "sdxl")] == ["", ""]
    assert families.map_why_not("flux", "depth", "pose", "lineart") == ""
    assert families.map_why_not("flux", "depth", "normal", "seg") == (
        "Flux.1's union ControlNet has no normal or seg mode (it takes depth, pose, lineart): rendered and shown, "
        "not sent")
    assert [families.label(f) for f in ("sd15", "sdxl", "flux")] == ["SD 1.5", "SDXL", "Flux.1"]
