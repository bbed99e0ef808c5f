"""The segmentation classes: the add-on's name -> index table, the guesses, the per-pixel encoding.

The table is checked against controlnet-aux's `ade_palette()` where it is installed (the engine
venv: `make test-unit` runs this file there too). controlnet-aux exposes the palette's colours but
not the class names, so the names are pinned by the palette colours that the ADE20K order
documents beside them (mmseg's ADE20KDataset: CLASSES and PALETTE, row for row, as vendored in
ControlNet 1.1's annotator/uniformer/mmseg/datasets/ade.py): if controlnet-aux ever reordered its
palette, these rows would move and this test would say which. The colours live in this test only;
the add-on never holds them.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import load

seg = load("core.conditioning.seg")

# (class, its ADE20K colour as documented beside the class name in mmseg's ADE20KDataset)
DOCUMENTED = [("wall", [120, 120, 120]), ("building", [180, 120, 120]), ("sky", [6, 230, 230]),
              ("floor", [80, 50, 50]), ("tree", [4, 200, 3]), ("road", [140, 140, 140]), ("grass", [4, 250, 7]),
              ("person", [150, 5, 61]), ("earth", [120, 120, 70]), ("car", [0, 102, 200]),
              ("streetlight", [0, 71, 255]), ("flag", [92, 0, 255])]


def test_table_against_controlnet_aux_palette() -> None:
    util = pytest.importorskip("controlnet_aux.util", reason="controlnet-aux lives in the engine venv")
    palette = util.ade_palette()
    assert len(palette) == 150
    assert all(0 <= index < len(palette) for index in seg.CLASSES.values())
    assert len(set(seg.CLASSES.values())) == len(seg.CLASSES)  # no two names share a row
    for name, colour in DOCUMENTED:
        assert list(palette[seg.CLASSES[name]]) == colour, name


def test_contract_positions() -> None:
    """The positions the job contract names (engine and add-on agree on them without the palette)."""
    assert [seg.CLASSES[n] for n in ("wall", "building", "sky", "person")] == [0, 1, 2, 12]
    assert seg.UNLABELED == 255 and max(seg.CLASSES.values()) < 150
    assert set(seg.NAME_WORDS.values()) <= set(seg.CLASSES) and seg.DEFAULT_CLASS in seg.CLASSES


@pytest.mark.parametrize("name, label", [
    ("Tree", "tree"), ("TreeLarge.001", "tree"), ("oak_02", "tree"), ("House", "building"),
    ("Building.03", "building"), ("Mannequin", "person"), ("Ground", "floor"), ("Road.001", "road"),
    ("LampPost", "streetlight"), ("lamp", "lamp"), ("Car.07", "car"), ("Bin.01", "ashcan"),
])
def test_guess_from_the_name(name: str, label: str) -> None:
    assert seg.guess(seg.ObjectInfo(name)) == label


def test_guess_from_the_data_and_the_order_of_sources() -> None:
    assert seg.guess(seg.ObjectInfo("Rig", type="ARMATURE")) == "person"
    assert seg.guess(seg.ObjectInfo("Body.Mesh", person=True)) == "person"
    assert seg.guess(seg.ObjectInfo("Plane", flat_ground=True)) == "floor"
    assert seg.guess(seg.ObjectInfo("Cube.004")) is None
    # user > collection > guess > default
    info = seg.ObjectInfo("Tree", user="Rock", collection="plant", collection_name="Props")
    assert seg.classify(info) == (seg.SegClass(34, "rock", "user"), None)
    info = seg.ObjectInfo("Tree", collection="plant", collection_name="Props")
    assert seg.classify(info) == (seg.SegClass(17, "plant", "collection"), None)
    assert seg.classify(seg.ObjectInfo("Tree")) == (seg.SegClass(4, "tree", "guess"), None)
    fallback, warning = seg.classify(seg.ObjectInfo("Cube.004"))
    assert fallback == seg.SegClass(0, "wall", "default") and "'Cube.004'" in warning and "default" in warning
    fallback, warning = seg.classify(seg.ObjectInfo("Ship", collection="spaceship", collection_name="Props"))
    assert fallback.source == "default" and "'spaceship'" in warning and "'Props'" in warning


def test_encode_through_the_lookup_table() -> None:
    classes = {1: seg.SegClass(12, "person", "guess"), 3: seg.SegClass(4, "tree", "user")}
    table = seg.lookup(classes, seg.background_class(True))
    index = np.array([[0, 1, 2, 3, 7, 1000]])
    assert seg.encode(index, table).tolist() == [[2, 12, 255, 4, 255, 255]]
    assert seg.lookup({}, seg.background_class(False)).tolist() == [255, 255]
    preview = seg.preview_colours(np.array([[12, 12, 4, 255]], np.uint8))
    assert preview[0, 0].tolist() == preview[0, 1].tolist() != preview[0, 2].tolist()
    assert preview[0, 3].tolist() == [0, 0, 0]
