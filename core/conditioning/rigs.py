"""Which bone stands for which OpenPose keypoint, for the rigs people actually use.

Keypoints follow OpenPose's COCO-18 body order and its 21-point hands. A
keypoint is a bone end: `(bone name, "head" | "tail")`. Automatic maps cover
Blender's human meta-rig and Rigify (`DEF-`/`ORG-` prefixed) and Mixamo
(`mixamorig:`); a user mapping per armature overrides any keypoint.

Plain Python; runs on any thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

BODY_KEYPOINTS = (
    "nose", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip
FINGERS = ("thumb", "index", "middle", "ring", "pinky")
HAND_KEYPOINTS = ("wrist",) + tuple(f"{f}_{i}" for f in FINGERS for i in range(1, 5))

BoneEnd = tuple[str, str]  # (bone name, "head" | "tail")

# The keypoints a rig needs before it counts as a person.
CORE_KEYPOINTS = ("neck", "right_shoulder", "left_shoulder", "right_hip", "left_hip")


def _metarig_body(side: dict[str, str]) -> dict[str, list[BoneEnd]]:
    """Blender's human meta-rig names; Rigify's DEF-/ORG- bones are the same names with a prefix."""
    m: dict[str, list[BoneEnd]] = {
        "nose": [("nose", "tail"), ("nose.004", "head"), ("nose.001", "head")],
        "neck": [("spine.004", "head")],
        "right_hip": [("thigh.R", "head")],
        "left_hip": [("thigh.L", "head")],
    }
    for s, name in side.items():
        m[f"{name}_shoulder"] = [(f"upper_arm.{s}", "head")]
        m[f"{name}_elbow"] = [(f"forearm.{s}", "head")]
        m[f"{name}_wrist"] = [(f"hand.{s}", "head")]
        m[f"{name}_hip"] = [(f"thigh.{s}", "head")]
        m[f"{name}_knee"] = [(f"shin.{s}", "head")]
        m[f"{name}_ankle"] = [(f"foot.{s}", "head")]
        m[f"{name}_eye"] = [(f"eye.{s}", "head")]
        m[f"{name}_ear"] = [(f"ear.{s}", "head")]
    return m


def _metarig_hand(s: str) -> dict[str, list[BoneEnd]]:
    m: dict[str, list[BoneEnd]] = {"wrist": [(f"hand.{s}", "head")]}
    m["thumb_1"] = [(f"thumb.01.{s}", "head")]
    m["thumb_2"] = [(f"thumb.02.{s}", "head")]
    m["thumb_3"] = [(f"thumb.03.{s}", "head")]
    m["thumb_4"] = [(f"thumb.03.{s}", "tail")]
    for finger in ("index", "middle", "ring", "pinky"):
        m[f"{finger}_1"] = [(f"f_{finger}.01.{s}", "head")]
        m[f"{finger}_2"] = [(f"f_{finger}.02.{s}", "head")]
        m[f"{finger}_3"] = [(f"f_{finger}.03.{s}", "head")]
        m[f"{finger}_4"] = [(f"f_{finger}.03.{s}", "tail")]
    return m


def _mixamo_body() -> dict[str, list[BoneEnd]]:
    # Mixamo rigs have no nose or ear bones: those keypoints stay unmapped unless the user maps them.
    m: dict[str, list[BoneEnd]] = {"nose": [], "neck": [("Neck", "head")]}
    for side, name in (("Right", "right"), ("Left", "left")):
        m[f"{name}_shoulder"] = [(f"{side}Arm", "head")]
        m[f"{name}_elbow"] = [(f"{side}ForeArm", "head")]
        m[f"{name}_wrist"] = [(f"{side}Hand", "head")]
        m[f"{name}_hip"] = [(f"{side}UpLeg", "head")]
        m[f"{name}_knee"] = [(f"{side}Leg", "head")]
        m[f"{name}_ankle"] = [(f"{side}Foot", "head")]
        m[f"{name}_eye"] = [(f"{side}Eye", "head")]
        m[f"{name}_ear"] = []
    return m


def _mixamo_hand(side: str) -> dict[str, list[BoneEnd]]:
    m: dict[str, list[BoneEnd]] = {"wrist": [(f"{side}Hand", "head")]}
    for finger, mixamo in zip(FINGERS, ("Thumb", "Index", "Middle", "Ring", "Pinky")):
        for i in range(1, 4):
            m[f"{finger}_{i}"] = [(f"{side}Hand{mixamo}{i}", "head")]
        m[f"{finger}_4"] = [(f"{side}Hand{mixamo}4", "head"), (f"{side}Hand{mixamo}3", "tail")]
    return m


@dataclass
class RigMap:
    """Resolved bone ends for one armature; None where a keypoint has no bone."""

    body: list[BoneEnd | None]
    left_hand: list[BoneEnd | None] | None
    right_hand: list[BoneEnd | None] | None
    unmapped: list[str] = field(default_factory=list)  # body keypoints with no bone

    @property
    def is_person(self) -> bool:
        index = {name: i for i, name in enumerate(BODY_KEYPOINTS)}
        return all(self.body[index[k]] is not None for k in CORE_KEYPOINTS)


def _prefixes(bones: set[str]) -> list[str]:
    """Name prefixes to try, most specific first: Rigify deform bones beat originals beat bare names."""
    found = [p for p in ("DEF-", "ORG-") if any(b.startswith(p) for b in bones)]
    colon = sorted({b.split(":", 1)[0] + ":" for b in bones if ":" in b})  # mixamorig:, mixamorig1:, …
    return found + colon + [""]


def _pick(candidates: Iterable[BoneEnd], bones: set[str], prefixes: list[str]) -> BoneEnd | None:
    for name, end in candidates:
        for prefix in prefixes:
            if prefix + name in bones:
                return prefix + name, end
    return None


def auto_map(bone_names: Iterable[str], overrides: Mapping[str, BoneEnd] | None = None) -> RigMap:
    """Map an armature's bones to OpenPose keypoints; `overrides` ("left_wrist" or "left_hand.index_2" → bone end) win."""
    bones = set(bone_names)
    prefixes = _prefixes(bones)
    overrides = {k: v for k, v in (overrides or {}).items() if v[0] in bones}
    tables = (_metarig_body({"R": "right", "L": "left"}), _mixamo_body())

    def resolve(key: str, options: list[list[BoneEnd]]) -> BoneEnd | None:
        if key in overrides:
            return overrides[key]
        for candidates in options:
            hit = _pick(candidates, bones, prefixes)
            if hit is not None:
                return hit
        return None

    body = [resolve(k, [t.get(k, []) for t in tables]) for k in BODY_KEYPOINTS]

    def hand(s: str, mixamo_side: str, label: str) -> list[BoneEnd | None] | None:
        tables_h = (_metarig_hand(s), _mixamo_hand(mixamo_side))
        points = [resolve(f"{label}.{k}", [t.get(k, []) for t in tables_h]) for k in HAND_KEYPOINTS]
        # A hand counts only with fingers: a wrist alone is already in the body.
        return points if sum(p is not None for p in points[1:]) >= 5 else None

    unmapped = [k for k, v in zip(BODY_KEYPOINTS, body) if v is None]
    return RigMap(body, hand("L", "Left", "left_hand"), hand("R", "Right", "right_hand"), unmapped)
