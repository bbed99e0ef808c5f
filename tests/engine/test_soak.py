"""The soak, short form (tests/engine/soak.py; the long form is benchmarks/bench_soak.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from soak import Soak


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the engine's RSS from /proc")
def test_soak_short(core: Any, tiny_models: dict[str, str], tmp_path: Path) -> None:
    soak = Soak(core, tiny_models, tmp_path, seconds=45)
    counts = soak.run()
    print(counts.line(), f"RSS {' -> '.join(f'{r:.0f}' for r in soak.rss)} MB")
    assert counts.kills_survived == 1 and counts.damaged == 1
    assert counts.hung == 0 and counts.frames_lost == 0 and not counts.errors, counts.errors[:5]
    assert counts.jobs >= 6 and counts.frames_checked >= 4, counts.line()
    warm, end = soak.rss[-2], soak.rss[-1]
    assert end - warm < 150, f"the engine grew from {warm:.0f} to {end:.0f} MB"
