"""The add-on's side of the engine: determinism across processes, crash and restart,
start-up failures, engine resolution, and the 'Install engine' environment."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_testlib import depth_png, make_job, pose_png, read_png, start_local_engine, wait_for

pytestmark = pytest.mark.engine


def run_shot(client: Any, tiny_models: dict[str, str], out: Path, seed: int) -> list[np.ndarray]:
    frames = [{"frame": i, "depth": client.upload_blob(depth_png(i / 3)),
               "pose": client.upload_blob(pose_png(i)) if i % 2 else None} for i in range(3)]
    status = wait_for(client, client.submit(make_job(tiny_models, frames, seed=seed, batch_size=3)))
    assert status["status"] == "done", status
    return [read_png(client.fetch_frame(status["id"], i, str(out / f"{seed}-{i}.png"))) for i in range(3)]


def test_determinism_crash_and_restart(core: Any, client: Any, tiny_models: dict[str, str],
                                       tmp_path: Path) -> None:
    # 1. The same job in a second engine with an empty cache gives the same pixels.
    reference = run_shot(client, tiny_models, tmp_path, seed=2024)
    other = start_local_engine(core, tmp_path / "data2")
    try:
        fresh = other.client()
        again = run_shot(fresh, tiny_models, tmp_path / "again", seed=2024)
        assert all(np.array_equal(a, b) for a, b in zip(reference, again, strict=True))
        # ...and another seed does not (so the comparison above can fail).
        changed = run_shot(fresh, tiny_models, tmp_path / "changed", seed=2025)
        assert not np.array_equal(reference[0], changed[0])
        # 2. A killed engine is reported as such, and restarts on the next use.
        pid = other.process.pid
        os.kill(pid, signal.SIGKILL)
        other.process.wait(timeout=10)
        with pytest.raises(core.client.EngineError) as info:
            other.check()
        assert info.value.code == "engine_died" and "stopped unexpectedly" in info.value.message
        with pytest.raises(core.client.EngineError) as info:
            fresh.health()
        assert info.value.code == "unreachable"
        restarted = other.ensure_running()
        assert other.process.pid != pid and restarted.health()["status"] == "ok"
        # Its cache survived the crash: the repeat needs no model.
        frames = [{"frame": i, "depth": restarted.upload_blob(depth_png(i / 3)),
                   "pose": restarted.upload_blob(pose_png(i)) if i % 2 else None} for i in range(3)]
        answer = restarted.submit_full(make_job(tiny_models, frames, seed=2024, batch_size=3))
        assert answer["status"] == "done" and answer["cached_frames"] == [0, 1, 2]
    finally:
        other.stop()
    assert not other.is_alive()


@pytest.mark.skipif(os.name == "nt", reason="uses a shell script as the interpreter")
def test_startup_failure_explains_missing_packages(core: Any, tmp_path: Path) -> None:
    # An interpreter without site-packages behaves like a Python that lacks the engine's packages.
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    fake.chmod(0o755)
    engine = core.process.LocalEngine(str(fake), data_dir=str(tmp_path / "d"), log_path=tmp_path / "log",
                                      startup_timeout=60)
    with pytest.raises(core.client.EngineError) as info:
        engine.start()
    assert info.value.code == "engine_died"
    assert "is not installed in" in info.value.message and "Install engine" in info.value.message
    missing = core.process.LocalEngine(str(tmp_path / "no-python"), log_path=tmp_path / "log2")
    with pytest.raises(core.client.EngineError) as info:
        missing.start()
    assert info.value.code == "no_python" and "no-python" in info.value.message


def test_resolution_order(core: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    resolve = core.process.resolve_config
    monkeypatch.delenv("VIEWFINDER_ENGINE_URL", raising=False)
    monkeypatch.delenv("VIEWFINDER_ENGINE_TOKEN", raising=False)
    monkeypatch.delenv("VIEWFINDER_ENGINE_PYTHON", raising=False)
    with pytest.raises(core.client.EngineError) as info:
        resolve()
    assert info.value.code == "no_python" and "Install engine" in info.value.message
    assert resolve(python="/opt/py").python == "/opt/py"
    with pytest.raises(core.client.EngineError) as info:
        resolve(url="http://gpu-box:8765")
    assert info.value.code == "missing_token"
    assert resolve(url="http://gpu-box:8765", token="t", python="/opt/py") == core.process.EngineConfig(
        url="http://gpu-box:8765", token="t")
    monkeypatch.setenv("VIEWFINDER_ENGINE_PYTHON", "/env/py")
    assert resolve(python="/opt/py").python == "/env/py"
    monkeypatch.setenv("VIEWFINDER_ENGINE_URL", "https://farm:1/")
    monkeypatch.setenv("VIEWFINDER_ENGINE_TOKEN", "envtok")
    assert resolve(url="http://gpu-box:8765", token="t") == core.process.EngineConfig(
        url="https://farm:1", token="envtok")


def test_install_engine_creates_venv_with_progress(core: Any, tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# nothing to install: the test checks the venv and the progress plumbing\n")
    messages = list(core.install.install_engine(tmp_path / "venv", python=sys.executable,
                                                requirements=requirements, constraints=None,
                                                pip_args=["--no-index"]))
    fractions = [m.fraction for m in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    python = core.install.venv_python(tmp_path / "venv")
    assert python.exists() and str(python) in messages[-1].line


def test_install_engine_cancel(core: Any, tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    started = time.monotonic()
    with pytest.raises(core.install.InstallCancelled):
        for _ in core.install.install_engine(tmp_path / "venv", python=sys.executable, cancel=cancel):
            pass
    assert time.monotonic() - started < 60
