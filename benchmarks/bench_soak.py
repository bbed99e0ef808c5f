"""The soak, long form (issue 22): three tokens submit, cancel and resubmit shots for minutes while
the engine is killed with -9 and started again, a cached frame is damaged and the cache quota is
hit; prints the counts (requests, jobs, kills survived, frames checked, frames lost: goal 0).

    .venv-engine/bin/python benchmarks/bench_soak.py [--seconds 600]

The same code as the short form in `make test` (tests/engine/soak.py, 45 s). Loopback, tiny models.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "engine"), str(ROOT)]

from conftest import _load_core  # noqa: E402
from harness import make_tiny_models, model_paths  # noqa: E402
from soak import Soak  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="viewfinder-soak-"))
    models = model_paths(make_tiny_models(folder / "models", "tiny", "--no-video"), "base", "depth", "pose")
    package = _load_core()
    core = types.SimpleNamespace(client=importlib.import_module(f"{package.__name__}.client.http"))
    soak = Soak(core, models, folder, seconds=args.seconds)
    counts = soak.run()
    print(f"soak {args.seconds:.0f} s: {counts.line()}; engine RSS {' -> '.join(f'{r:.0f}' for r in soak.rss)} MB "
          "(start, before the kill, the restarted engine warm, end)")
    for error in counts.errors[:10]:
        print("  error:", error)
    return 0 if counts.frames_lost == 0 and counts.hung == 0 and not counts.errors else 1


if __name__ == "__main__":
    sys.exit(main())
