"""Normal, line-art and segmentation maps of a shot, from the passes of its one render per frame.

`MapOptions` says which of the three a shot renders (plain data from its settings,
`options_from_shot`); `GeometryMaps` holds what a shot's render needs for them: per-object
pass indices (lines between objects and a class per object need the object, not the character
group the masks use), the class table, and per frame writes `normal/`, `lineart/`, `seg/`
into the temporary folder. Its `meta()` is the "maps" block of meta.json.

With no option on, nothing here runs: the render, the pass indices and meta.json are what
they were before these maps existed (depth + pose shots stay byte for byte the same).

Main thread (`assign`, `frame` read the camera and objects); the numpy work is in normal.py,
lineart.py and seg.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import lineart as line_art
from . import normal, seg
from .png import write_png

log = logging.getLogger(__name__)

KINDS = ("normal", "lineart", "seg")
MAX_OBJECTS = 32767  # pass_index is a short
# Modifiers that keep a mesh's topology; any other may change it from frame to frame.
_TOPOLOGY_SAFE = {"ARMATURE", "CAST", "CURVE", "DISPLACE", "HOOK", "LAPLACIANDEFORM", "LATTICE", "MESH_DEFORM",
                  "SHRINKWRAP", "SIMPLE_DEFORM", "SMOOTH", "SURFACE_DEFORM", "WARP", "WAVE", "CORRECTIVE_SMOOTH",
                  "LAPLACIANSMOOTH", "NORMAL_EDIT", "WEIGHTED_NORMAL", "UV_PROJECT", "UV_WARP", "VERTEX_WEIGHT_EDIT",
                  "VERTEX_WEIGHT_MIX", "VERTEX_WEIGHT_PROXIMITY", "DATA_TRANSFER", "MESH_CACHE", "MESH_SEQUENCE_CACHE"}


@dataclass(frozen=True)
class MapOptions:
    """Which of normal / line art / segmentation a shot renders, and the line-art settings."""

    normal: bool = False
    lineart: bool = False
    seg: bool = False
    lineart_form: str = "lineart"  # one of line_art.FORMS
    line_weight: int = 1
    crease_angle_deg: float = line_art.DEFAULT_CREASE_DEG

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in KINDS if getattr(self, k))

    @property
    def normal_pass(self) -> bool:
        return self.normal or self.lineart

    @property
    def per_object(self) -> bool:
        return self.lineart or self.seg

    def state(self) -> dict[str, Any]:
        """What the maps on disk depend on (hashed into meta.json's state): only the options in use."""
        out: dict[str, Any] = {"maps": list(self.kinds)}
        if self.lineart:
            out["lineart"] = [self.lineart_form, int(self.line_weight), round(float(self.crease_angle_deg), 4)]
        return out


def options_from_shot(shot: Any, kinds: tuple[str, ...] | None = None) -> MapOptions:
    """The shot's options: a map is on when its weight can be above 0 on some frame (`kinds` overrides).

    Reads `<kind>_weight`, `lineart_form`, `line_weight`, `crease_angle` where the shot has them
    (a plain namespace without them renders none of the three).
    """
    if kinds is None:
        kinds = tuple(k for k in KINDS if float(getattr(shot, f"{k}_weight", 0.0) or 0.0) > 0.0)
    angle = getattr(shot, "crease_angle", None)
    return MapOptions(
        normal="normal" in kinds, lineart="lineart" in kinds, seg="seg" in kinds,
        lineart_form=str(getattr(shot, "lineart_form", "LINEART")).lower(),
        line_weight=int(getattr(shot, "line_weight", 1)),
        crease_angle_deg=float(np.degrees(angle)) if angle is not None else line_art.DEFAULT_CREASE_DEG,
    )


@dataclass
class GeometryMaps:
    """A shot's normal / line-art / seg state through its render (see the module docstring)."""

    options: MapOptions
    shot_name: str
    has_world: bool = False
    warnings: list[str] = field(default_factory=list)
    classes: dict[int, seg.SegClass] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    frames_written: dict[str, list[int]] = field(default_factory=dict)
    _groups: np.ndarray | None = None
    _table: np.ndarray | None = None
    _ids: dict[Any, int] = field(default_factory=dict)
    _numbers: dict[Any, int] = field(default_factory=dict)
    _topology: dict[str, tuple[int, int]] = field(default_factory=dict)
    _changed: set[str] = field(default_factory=set)

    def prepare(self, ids: dict[Any, int], owner_of: Any) -> None:
        """Per-object numbers and the class table, when lines or seg need them (before the state hash).

        `ids` is masks.assign_ids' {object: group id}; `groups()` maps a pass back to those ids.
        """
        self._ids = ids
        if not self.options.per_object:
            return
        ordered = sorted(ids, key=lambda o: o.name)[:MAX_OBJECTS]
        if len(ids) > MAX_OBJECTS:
            self.warnings.append(f"Shot '{self.shot_name}': more than {MAX_OBJECTS} objects; the rest get no "
                                 "lines between them and no segmentation class")
        self._numbers = {obj: i for i, obj in enumerate(ordered, start=1)}
        groups = np.zeros(len(ordered) + 1, dtype=np.int32)
        for obj, number in self._numbers.items():
            groups[number] = ids[obj]
        self._groups = groups
        self.names = {number: obj.name for obj, number in self._numbers.items()}
        if self.options.seg:
            self._classify(self._numbers, owner_of)

    def assign(self, guard: Any) -> None:
        """Set the pass indices `prepare` chose (group ids, or per-object numbers) through the render guard."""
        numbers = self._numbers if self.options.per_object else self._ids
        for obj, number in numbers.items():
            guard.set(obj, "pass_index", number)

    def _classify(self, numbers: dict[Any, int], owner_of: Any) -> None:
        for number, info in seg.object_infos(numbers, owner_of).items():
            seg_class, warning = seg.classify(info)
            self.classes[number] = seg_class
            if warning is not None:
                self.warnings.append(warning)
        self._table = seg.lookup(self.classes, seg.background_class(self.has_world))

    def state(self) -> bytes:
        """What the maps depend on beyond the scene's geometry: the options in use and the objects' classes.

        Empty when no map of this module is on, so depth + pose shots keep the state hash they had.
        """
        if not self.options.kinds:
            return b""
        classes = {self.names[n]: c.index for n, c in sorted(self.classes.items())}
        return json.dumps([self.options.state(), classes, self.has_world if self.options.seg else None],
                          sort_keys=True).encode()

    def groups(self, index: np.ndarray) -> np.ndarray:
        """The masks' group ids of an Object Index pass (the pass itself when ids are per group)."""
        if self._groups is None:
            return index
        return self._groups[np.clip(index, 0, self._groups.size - 1)]

    def folders(self) -> list[str]:
        return list(self.options.kinds)

    def frame(self, folder: Path, frame: int, passes: dict[str, np.ndarray], camera: tuple[np.ndarray, np.ndarray],
              size: tuple[int, int]) -> None:
        """Write this frame's maps. `camera` is render.camera_at_frame's (world matrix, projection)."""
        name = f"{frame:04d}.png"
        index, z = passes["index"], passes["z"]
        cam_normals = None
        if self.options.normal_pass:
            world = passes.get("normal")
            if world is None:
                raise RuntimeError("the Normal pass is missing from the render")
            cam_normals = normal.camera_normals(world, normal.world_to_camera_rotation(camera[0]))
        if self.options.normal:
            assert cam_normals is not None
            write_png(folder / "normal" / name, normal.encode(cam_normals, index > 0))
        if self.options.lineart:
            assert cam_normals is not None
            rays = line_art.CameraRays.from_projection(camera[1], *size)
            lines = line_art.edge_pixels(index, z, cam_normals, rays, self.options.crease_angle_deg)
            write_png(folder / "lineart" / name,
                      line_art.render_form(lines, self.options.lineart_form, self.options.line_weight))
        if self.options.seg:
            assert self._table is not None
            write_png(folder / "seg" / name, seg.encode(index, self._table))
        for kind in self.options.kinds:
            self.frames_written.setdefault(kind, []).append(frame)

    def check_topology(self, scene: Any, depsgraph: Any) -> None:
        """Warn once per object whose modifiers change its vertex or face count between frames."""
        for obj in scene.objects:
            if obj.type != "MESH" or obj.hide_render or obj.name in self._changed:
                continue
            changing = [m for m in obj.modifiers if m.type not in _TOPOLOGY_SAFE and m.show_render]
            if not changing:
                continue
            data = obj.evaluated_get(depsgraph).data
            counts = (len(data.vertices), len(data.polygons))
            first = self._topology.setdefault(obj.name, counts)
            if counts != first:
                self._changed.add(obj.name)
                self.warnings.append(
                    f"Shot '{self.shot_name}': object '{obj.name}' changes its topology between frames (modifier "
                    f"'{changing[0].name}'): Cycles gives it no motion, so its flow is zero; depth, normals, lines "
                    "and segmentation are rendered per frame and stay exact")

    def meta(self) -> dict[str, Any]:
        """meta.json's "maps" block (only the maps rendered)."""
        out: dict[str, Any] = {}
        if self.options.normal:
            out["normal"] = {"path": "normal/NNNN.png", "encoding": normal.ENCODING, "convention": normal.CONVENTION,
                             "background": list(normal.BACKGROUND)}
        if self.options.lineart:
            weight = 1 if self.options.lineart_form == "canny" else int(self.options.line_weight)
            out["lineart"] = {"path": "lineart/NNNN.png", "encoding": "png 8-bit grayscale, 255 lines on 0",
                              "form": self.options.lineart_form, "line_weight": weight,
                              "crease_angle_deg": round(float(self.options.crease_angle_deg), 4),
                              "sources": "object boundaries (Object Index), depth steps (Z), creases (Normal)"}
        if self.options.seg:
            background = seg.background_class(self.has_world)
            out["seg"] = {"path": "seg/NNNN.png", "encoding": seg.ENCODING,
                          "classes": {self.names[n]: [c.index, c.label, c.source] for n, c in sorted(self.classes.items())},
                          "background": [background.index, background.label, background.source]}
        for kind, block in out.items():
            block["frames"] = self.frames_written.get(kind, [])
        return out

