"""Issue 11 load test on loopback, bounded in count (4 x 12 attacks, 3 jobs) and time
(120 s at most): unauthenticated and oversized requests while valid jobs run. /health
keeps answering, memory stays bounded and every job finishes with whole frames. The
figures are printed (pytest -s); benchmarks/bench_front_door.py runs the same at scale."""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any

from engine_testlib import ROOT


def load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_front_door", ROOT / "benchmarks" / "bench_front_door.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_health_memory_and_jobs_under_attack(engine: Any, tiny_models: dict[str, str]) -> None:
    bench = load_bench()
    figures = bench.run_load(engine.client(timeout=30), int(engine.port), engine.token, engine.process.pid,
                             tiny_models, attackers=4, requests_each=12, jobs=3, seconds=120.0)
    print("front-door load:", json.dumps(figures))
    assert figures["requests_sent"] == 48
    assert figures["answers"] == {"401": 24, "413": 24}
    assert figures["health_errors"] == [] and figures["health_checks"] > 0
    assert figures["rss_growth_mb"] < 200, figures  # 48 x 9-96 MB declared; nothing of it kept
    assert (figures["jobs_done"], figures["frames_ok"]) == (3, 6), figures
