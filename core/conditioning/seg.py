"""Segmentation control maps: ADE20K class indices per pixel, 8-bit grayscale.

A pixel's value is the 0-based index of its object's class in the ADE20K order of
controlnet-aux's `ade_palette()` (0 wall, 1 building, 2 sky, 3 floor, ... 12 person, ...),
255 where nothing is labelled. The add-on holds class NAMES only, never the palette's colours:
the engine colours the map with controlnet-aux's own palette before the seg ControlNet, so the
colours the net was trained on come from one place. The preview colours (`preview_colours`)
are the add-on's own and only for showing the map in Blender.

An object's class, first found wins (`classify`):
1. "user": its own Segmentation Class (`Object.viewfinder_seg_class`);
2. "collection": the Segmentation Class of a collection it is in;
3. "guess": from its name (a word such as "Tree", "House", "Car"; `NAME_WORDS`) or its data
   (an armature, or a mesh it deforms or carries: person; a flat, level mesh spread wide:
   floor);
4. "default": DEFAULT_CLASS, with a warning naming the object and where to set its class.
A class name the table does not hold (typed by hand) falls back to the default with a warning.
The background is "sky" when the scene has a world (what a camera sees past the geometry
outdoors), unlabelled (255) without one.

Plain Python + numpy; runs on any thread (the object walk in `object_infos` reads bpy data on
the main thread).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ENCODING = "png 8-bit grayscale, ADE20K class index (controlnet_aux.util.ade_palette() order, 0-based), 255 unlabeled"
UNLABELED = 255
DEFAULT_CLASS = "wall"
SKY = "sky"

# The ADE20K classes this add-on names, with their index in the ADE20K 150-class order
# (mmseg's ADE20KDataset.CLASSES, the order of controlnet_aux.util.ade_palette()).
# tests/unit/test_seg_classes.py checks them against controlnet-aux's palette.
CLASSES: dict[str, int] = {
    "wall": 0, "building": 1, "sky": 2, "floor": 3, "tree": 4, "ceiling": 5, "road": 6, "bed": 7,
    "windowpane": 8, "grass": 9, "cabinet": 10, "sidewalk": 11, "person": 12, "earth": 13, "door": 14,
    "table": 15, "mountain": 16, "plant": 17, "curtain": 18, "chair": 19, "car": 20, "water": 21,
    "painting": 22, "sofa": 23, "shelf": 24, "house": 25, "sea": 26, "mirror": 27, "rug": 28, "field": 29,
    "armchair": 30, "fence": 32, "desk": 33, "rock": 34, "lamp": 36, "railing": 38, "box": 41, "column": 42,
    "signboard": 43, "sand": 46, "skyscraper": 48, "path": 52, "stairs": 53, "river": 60, "bridge": 61,
    "bookcase": 62, "flower": 66, "book": 67, "hill": 68, "bench": 69, "palm": 72, "computer": 74,
    "boat": 76, "bus": 80, "light": 82, "truck": 83, "tower": 84, "awning": 86, "streetlight": 87,
    "television receiver": 89, "pole": 93, "bottle": 98, "van": 102, "ship": 103, "fountain": 104,
    "stool": 110, "barrel": 111, "tent": 114, "minibike": 116, "pot": 125, "animal": 126, "bicycle": 127,
    "lake": 128, "sculpture": 132, "vase": 135, "traffic light": 136, "ashcan": 138, "monitor": 143,
    "flag": 149,
}

# Words in an object's name -> class (the first word of the name that matches wins).
NAME_WORDS: dict[str, str] = {
    **{w: "tree" for w in ("tree", "trees", "oak", "pine", "birch", "fir", "bush", "shrub", "hedge")},
    **{w: "building" for w in ("building", "house", "home", "shop", "store", "facade", "block", "office",
                                "church", "hotel", "apartment", "barn", "hut", "cabin")},
    **{w: "person" for w in ("person", "people", "human", "man", "woman", "boy", "girl", "child", "character",
                              "mannequin", "figure", "body", "actor", "crowd", "pedestrian")},
    **{w: "floor" for w in ("floor", "ground", "tiles", "platform")},
    **{w: "road" for w in ("road", "street", "asphalt", "highway", "lane")},
    **{w: "sidewalk" for w in ("sidewalk", "pavement", "kerb", "curb")},
    **{w: "grass" for w in ("grass", "lawn", "meadow", "turf")},
    **{w: "earth" for w in ("earth", "terrain", "dirt", "soil", "landscape")},
    **{w: "sky" for w in ("sky", "skydome", "skybox", "clouds")},
    **{w: "car" for w in ("car", "cars", "sedan", "taxi", "vehicle", "jeep")},
    **{w: "streetlight" for w in ("streetlight", "lamppost", "streetlamp")},
    **{w: "ashcan" for w in ("bin", "trashcan", "ashcan", "dustbin", "garbage", "trash")},
    **{w: "windowpane" for w in ("window", "windowpane")},
    **{w: "water" for w in ("water", "pond", "ocean")},
    **{w: "mountain" for w in ("mountain", "mountains", "cliff")},
    **{w: "rock" for w in ("rock", "rocks", "stone", "boulder")},
    "wall": "wall", "ceiling": "ceiling", "roof": "building", "door": "door", "table": "table", "chair": "chair",
    "sofa": "sofa", "couch": "sofa", "bed": "bed", "desk": "desk", "shelf": "shelf", "cabinet": "cabinet",
    "fence": "fence", "railing": "railing", "column": "column", "pillar": "column", "stairs": "stairs",
    "steps": "stairs", "bridge": "bridge", "bench": "bench", "boat": "boat", "ship": "ship", "bus": "bus",
    "truck": "truck", "van": "van", "bike": "bicycle", "bicycle": "bicycle", "motorbike": "minibike",
    "lamp": "lamp", "light": "light", "pole": "pole", "sign": "signboard", "signboard": "signboard",
    "tower": "tower", "skyscraper": "skyscraper", "tent": "tent", "flag": "flag", "box": "box", "crate": "box",
    "plant": "plant", "flower": "flower", "flowers": "flower", "palm": "palm", "painting": "painting",
    "picture": "painting", "mirror": "mirror", "rug": "rug", "carpet": "rug", "curtain": "curtain",
    "book": "book", "books": "book", "bookcase": "bookcase", "bottle": "bottle", "vase": "vase", "pot": "pot",
    "barrel": "barrel", "stool": "stool", "statue": "sculpture", "sculpture": "sculpture", "fountain": "fountain",
    "animal": "animal", "dog": "animal", "cat": "animal", "horse": "animal", "cow": "animal", "bird": "animal",
    "computer": "computer", "laptop": "computer", "monitor": "monitor", "tv": "television receiver",
    "television": "television receiver", "sand": "sand", "beach": "sand", "river": "river", "lake": "lake",
    "sea": "sea", "hill": "hill", "field": "field", "path": "path", "awning": "awning", "armchair": "armchair",
}


@dataclass(frozen=True)
class ObjectInfo:
    """What classifying one object needs, read off Blender (`object_infos`) or made up in tests."""

    name: str
    type: str = "MESH"  # Blender's object type
    person: bool = False  # an armature, or a mesh an armature deforms or carries
    flat_ground: bool = False  # a level, flat mesh spread wide: a ground plane
    user: str = ""  # the object's own Segmentation Class
    collection: str = ""  # the Segmentation Class of a collection it is in ("" none)
    collection_name: str = ""


@dataclass(frozen=True)
class SegClass:
    index: int
    label: str
    source: str  # "user", "collection", "guess" or "default"


def name_words(name: str) -> list[str]:
    """Lower-case words of an object name: "TreeLarge.001" -> ["tree", "large"], "lamp_post" -> ["lamp", "post"]."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    return [w for w in re.split(r"[^A-Za-z]+", spaced.lower()) if w]


def guess(info: ObjectInfo) -> str | None:
    """A class from the object's name, else from its data; None when neither says anything."""
    words = name_words(info.name)
    joined = "".join(words)
    if joined in NAME_WORDS:  # "LampPost" -> "lamppost"
        return NAME_WORDS[joined]
    for word in words:
        if word in NAME_WORDS:
            return NAME_WORDS[word]
    if info.person or info.type == "ARMATURE":
        return "person"
    if info.flat_ground:
        return "floor"
    return None


def classify(info: ObjectInfo) -> tuple[SegClass, str | None]:
    """The object's class and, when it fell back to the default, a warning naming it."""
    for source, value in (("user", info.user), ("collection", info.collection)):
        label = value.strip().lower()
        if not label:
            continue
        if label in CLASSES:
            return SegClass(CLASSES[label], label, source), None
        where = "its" if source == "user" else f"its collection '{info.collection_name}':"
        return SegClass(CLASSES[DEFAULT_CLASS], DEFAULT_CLASS, "default"), (
            f"Object '{info.name}', {where} Segmentation Class '{value}' is not an ADE20K class Viewfinder "
            f"knows: labelled '{DEFAULT_CLASS}'; pick one from the list (Object Properties ▸ Viewfinder)")
    label = guess(info)
    if label is not None:
        return SegClass(CLASSES[label], label, "guess"), None
    return SegClass(CLASSES[DEFAULT_CLASS], DEFAULT_CLASS, "default"), (
        f"Object '{info.name}' has no segmentation class and none could be guessed from its name or shape: "
        f"labelled '{DEFAULT_CLASS}' (the default); set its Segmentation Class in Object Properties ▸ Viewfinder "
        "(or its collection's)")


def background_class(has_world: bool) -> SegClass:
    return SegClass(CLASSES[SKY], SKY, "world") if has_world else SegClass(UNLABELED, "unlabeled", "no world")


def lookup(classes: dict[int, SegClass], background: SegClass) -> np.ndarray:
    """uint8 table: Object Index pass value -> class index (0, the background, -> `background`).

    One entry past the highest id stays unlabelled: `encode` clips every other value to it.
    """
    table = np.full(max(classes, default=0) + 2, UNLABELED, dtype=np.uint8)
    table[0] = background.index
    for number, seg_class in classes.items():
        table[number] = seg_class.index
    return table


def encode(index: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 (H, W) class map of an Object Index pass through a `lookup` table (unknown ids unlabelled)."""
    return table[np.clip(index, 0, table.size - 1)]


def preview_colours(classes: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) colours for SHOWING a class map in Blender: the add-on's own hues, not ADE20K's palette.

    Preview only: the engine colours the map with controlnet-aux's palette, and no file the
    engine reads ever holds these colours.
    """
    values = classes.astype(np.uint32)
    hue = (values * 0.618034) % 1.0
    rgb = np.stack([np.abs(hue * 6.0 - 3.0) - 1.0, 2.0 - np.abs(hue * 6.0 - 2.0), 2.0 - np.abs(hue * 6.0 - 4.0)],
                   axis=-1)
    out = (np.clip(rgb, 0.0, 1.0) * 200.0 + 40.0).astype(np.uint8)
    out[classes == UNLABELED] = 0
    return out


def write_previews(source: Path, target: Path, names: list[str]) -> list[str]:
    """Write `preview_colours` of the class maps `source/<name>` to `target/<name>`; the names written.

    For the Preview operator and the storyboard only: a grey class map (values up to 149) is
    near-black on screen.
    """
    from .png import read_png, write_png

    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        if (source / name).is_file():
            write_png(target / name, preview_colours(read_png(source / name)))
            written.append(name)
    return written


def object_infos(objects: dict[Any, int], owner_of: Any) -> dict[int, ObjectInfo]:
    """ObjectInfo per pass index for `objects` ({bpy object: pass index}). Main thread (reads bpy data)."""
    infos: dict[int, ObjectInfo] = {}
    for obj, number in objects.items():
        owner = owner_of(obj)
        collection, collection_name = "", ""
        for coll in getattr(obj, "users_collection", ()):
            value = str(getattr(coll, "viewfinder_seg_class", "") or "")
            if value.strip():
                collection, collection_name = value, coll.name
                break
        infos[number] = ObjectInfo(
            name=obj.name, type=obj.type, person=owner is not obj and getattr(owner, "type", "") == "ARMATURE",
            flat_ground=_flat_ground(obj), user=str(getattr(obj, "viewfinder_seg_class", "") or ""),
            collection=collection, collection_name=collection_name)
    return infos


def _flat_ground(obj: Any) -> bool:
    """A mesh whose world bounding box is level and thin (under 2% of its extent) and at least 4 units across."""
    if obj.type != "MESH":
        return False
    corners = np.array([obj.matrix_world @ _vector(c) for c in obj.bound_box], dtype=np.float64)
    extent = corners.max(axis=0) - corners.min(axis=0)
    across = float(max(extent[0], extent[1]))
    return across >= 4.0 and float(extent[2]) <= 0.02 * across


def _vector(corner: Any) -> Any:
    from mathutils import Vector  # deferred: Blender only

    return Vector(corner)
