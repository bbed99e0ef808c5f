"""Finalize Take's size: 2x or 4x, capped to the scene's output size with a message, refused when no larger."""

from __future__ import annotations

import pytest
from helpers import load

finalize = load("core.jobs.finalize")
generate = load("core.generate.shot")


def test_factor_within_the_output_size_is_exact() -> None:
    assert finalize.final_size(192, 112, 2, 1920, 1080) == (384, 224, "")
    assert finalize.final_size(192, 112, 4, 1920, 1080) == (768, 448, "")


def test_above_the_output_size_is_capped_with_the_reason() -> None:
    width, height, note = finalize.final_size(192, 112, 4, 384, 216)
    assert (width, height) == (368, 216)  # the aspect's limit (216/112 = 1.93x), multiples of 8
    assert "4× of 192×112 would be 768×448, above the scene's output size 384×216: capped at 368×216" in note


def test_a_take_at_the_output_size_is_refused_naming_the_fix() -> None:
    with pytest.raises(generate.GenerationError, match="raise the output resolution"):
        finalize.final_size(384, 216, 2, 384, 216)
    with pytest.raises(generate.GenerationError, match="must be 2 or 4"):
        finalize.final_size(192, 112, 3, 1920, 1080)
