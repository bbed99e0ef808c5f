"""Plain-module checks: 16-bit PNG round trip, inverse-depth encode/decode, flow conventions, rig maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import load

png = load("core.conditioning.png")
depth = load("core.conditioning.depth")
flow = load("core.conditioning.flow")
rigs = load("core.conditioning.rigs")


def test_png16_round_trip_keeps_all_16_bits(tmp_path: Path) -> None:
    values = (np.arange(40 * 64, dtype=np.uint32) * 2654435761 % 65536).astype(np.uint16).reshape(40, 64)
    png.write_png(tmp_path / "a.png", values)
    back = png.read_png(tmp_path / "a.png")
    assert back.dtype == np.uint16 and np.array_equal(back, values)


def test_depth_round_trip_within_quantization() -> None:
    z = np.array([[1.0, 2.0, 10.0, 100.0, 1e10]])
    encoded = depth.encode(z, 1.0, 100.0)
    assert encoded[0, 0] == 65535 and encoded[0, 3] == 1 and encoded[0, 4] == 0
    decoded = depth.decode(encoded, 1.0, 100.0)
    assert np.allclose(decoded[0, :4], z[0, :4], rtol=0.002) and np.isinf(decoded[0, 4])


def test_flow_signs_from_vector_pass() -> None:
    ones = np.ones((2, 3), np.float32)
    # Blender: XY = prev − cur, ZW = cur − next, y up.
    forward, backward = flow.flows_from_vector_pass(2 * ones, 3 * ones, 2 * ones, 3 * ones)
    assert forward[0, 0].tolist() == [-2.0, 3.0] and backward[0, 0].tolist() == [2.0, -3.0]


def test_unrecognizable_rig_is_not_a_person() -> None:
    assert not rigs.auto_map(["Bone", "Bone.001"]).is_person
    rigify = rigs.auto_map(["ORG-upper_arm.L", "DEF-upper_arm.L", "DEF-upper_arm.R", "DEF-thigh.L", "DEF-thigh.R",
                            "DEF-spine.004"])
    assert rigify.is_person and rigify.body[5] == ("DEF-upper_arm.L", "head")
