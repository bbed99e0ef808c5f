"""The numpy OpenPose drawing is pixel-identical to controlnet-aux's (which uses OpenCV).

Needs controlnet_aux and cv2: run with the engine venv
(`.venv-engine/bin/python -m pytest tests/unit/test_pose_drawing.py`); skipped elsewhere.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from helpers import load


@pytest.fixture(autouse=True)
def _matplotlib_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    """controlnet-aux's draw_handpose imports matplotlib only for `colors.hsv_to_rgb`; the engine
    venv does not ship matplotlib, so provide that one function (matplotlib's own algorithm), for
    each test only: a stub left in sys.modules breaks diffusers' import in later tests of the same
    process (it asks importlib for matplotlib's spec)."""
    try:
        import matplotlib.colors  # noqa: F401
        return
    except ImportError:
        pass

    def hsv_to_rgb(hsv: object) -> np.ndarray:
        h, s, v = (float(c) for c in np.asarray(hsv, dtype=float))
        i = int(h * 6.0)
        f = h * 6.0 - i
        p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
        return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6])

    colors = types.ModuleType("matplotlib.colors")
    colors.hsv_to_rgb = hsv_to_rgb  # type: ignore[attr-defined]
    package = types.ModuleType("matplotlib")
    package.colors = colors  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "matplotlib", package)
    monkeypatch.setitem(sys.modules, "matplotlib.colors", colors)


util = pytest.importorskip("controlnet_aux.open_pose.util")
pytest.importorskip("cv2")
body_mod = pytest.importorskip("controlnet_aux.open_pose.body")
draw = load("core.conditioning.openpose_draw")
Keypoint = body_mod.Keypoint


def random_people(rng: np.random.Generator, count: int, spread: float) -> list:
    people = []
    for _ in range(count):
        center = rng.uniform(0.1, 0.9, 2)
        body = []
        for _k in range(18):
            p = center + rng.normal(0, spread, 2)
            inside = 0.0 <= p[0] < 1.0 and 0.0 <= p[1] < 1.0
            body.append((float(p[0]), float(p[1])) if inside and rng.random() > 0.1 else None)
        hands = []
        for _h in range(2):
            if rng.random() < 0.3:
                hands.append(None)
                continue
            wrist = center + rng.normal(0, spread, 2)
            hand = []
            for _k in range(21):
                p = wrist + rng.normal(0, spread / 4, 2)
                inside = 0.0 <= p[0] < 1.0 and 0.0 <= p[1] < 1.0
                hand.append((float(p[0]), float(p[1])) if inside and rng.random() > 0.1 else None)
            hands.append(hand)
        people.append((body, hands[0], hands[1]))
    return people


def reference(height: int, width: int, people: list) -> np.ndarray:
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for body, left, right in people:
        canvas = util.draw_bodypose(canvas, [Keypoint(x, y) if (x, y) != (None, None) else None for x, y in
                                             [(k if k is not None else (None, None)) for k in body]])
        for hand in (left, right):
            if hand is not None:
                # controlnet-aux's hand detector reports missing points as (0, 0), never None.
                canvas = util.draw_handpose(canvas, [Keypoint(*(k if k is not None else (0.0, 0.0))) for k in hand])
    return canvas


@pytest.mark.parametrize("size", [(288, 512), (72, 128), (576, 1024), (512, 512)])
@pytest.mark.parametrize("seed", range(6))
def test_pixel_identical_to_controlnet_aux(size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed * 100 + size[0])
    people = random_people(rng, count=1 + seed % 3, spread=0.05 + 0.05 * (seed % 3))
    ours = draw.draw_people(size[0], size[1], people)
    theirs = reference(size[0], size[1], people)
    assert ours.any(), "nothing was drawn: the test would prove nothing"
    differing = int(np.any(ours != theirs, axis=-1).sum())
    assert differing == 0, f"{differing} pixels differ"


def test_limbs_at_every_angle_and_length() -> None:
    # A fan of limbs through every integer angle, short and long, near the borders too.
    H, W = 288, 512
    for length in (0.0, 0.004, 0.02, 0.3, 1.2):
        for deg in range(0, 360, 7):
            a = (0.5, 0.5)
            b = (0.5 + length * np.cos(np.radians(deg + 0.3)) / 2, 0.5 + length * np.sin(np.radians(deg + 0.3)) / 2)
            b = (min(max(b[0], 0.0), 0.999), min(max(b[1], 0.0), 0.999))
            body = [None] * 18
            body[1], body[2] = a, b  # neck → right shoulder
            people = [(body, None, None)]
            ours = draw.draw_people(H, W, people)
            theirs = reference(H, W, people)
            assert np.array_equal(ours, theirs), (length, deg)
