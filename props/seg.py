"""Segmentation classes set by the user: `object.viewfinder_seg_class` and `collection.viewfinder_seg_class`.

Empty means "guess" (core/conditioning/seg.py: the object's own class wins over its collection's,
which wins over the guess from its name and data). The field offers the ADE20K classes the
add-on knows (`seg.CLASSES`) as you type; a name it does not know falls back to the default
class with a warning when the maps render.
"""

from __future__ import annotations

from typing import Any

import bpy
from bpy.props import StringProperty

from ..core.conditioning.seg import CLASSES

DESCRIPTION = ("ADE20K class for the segmentation map (wall, building, tree, person, car, ...); "
               "empty: {what}")


def _search(_self: Any, _context: Any, text: str) -> list[str]:
    """The known class names containing what was typed (Blender's string search callback)."""
    typed = text.strip().lower()
    return [name for name in sorted(CLASSES) if typed in name]


def _prop(what: str) -> Any:
    return StringProperty(name="Segmentation Class", description=DESCRIPTION.format(what=what), search=_search)


def register() -> None:
    bpy.types.Object.viewfinder_seg_class = _prop("the collection's class, else a guess from the name and data")
    bpy.types.Collection.viewfinder_seg_class = _prop("each object's own class, else a guess")


def unregister() -> None:
    del bpy.types.Collection.viewfinder_seg_class
    del bpy.types.Object.viewfinder_seg_class
