"""'Install engine': a virtual environment with the engine's pinned requirements.

For users with no Python of their own. Runs in Blender's Python (stdlib only) on a
worker thread: ``install_engine`` is a generator of ``InstallProgress`` messages that
the UI thread drains; setting ``cancel`` stops pip and the generator raises.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..worker import MsgProgress

logger = logging.getLogger(__name__)

ENGINE_DIR = Path(__file__).resolve().parents[2] / "engine"  # core/client/install.py -> <root>/engine


@dataclass(frozen=True)
class InstallProgress:
    fraction: float
    line: str


class InstallCancelled(Exception):
    pass


class InstallFailed(Exception):
    pass


def venv_python(venv_dir: str | Path) -> Path:
    venv = Path(venv_dir)
    return venv / "Scripts" / "python.exe" if os.name == "nt" else venv / "bin" / "python"


def _count_requirements(path: Path) -> int:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    return sum(1 for line in lines if line.strip() and not line.lstrip().startswith(("#", "-")))


def _run(cmd: Sequence[str], cancel: threading.Event | None) -> Iterator[str]:
    """Run ``cmd`` and yield its output lines; terminate it when ``cancel`` is set."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=env, text=True, bufsize=1)
    assert process.stdout is not None
    tail: list[str] = []
    try:
        for raw in process.stdout:
            line = raw.rstrip()
            tail = (tail + [line])[-15:]
            if cancel is not None and cancel.is_set():
                raise InstallCancelled("engine installation cancelled")
            yield line
        code = process.wait()
        if cancel is not None and cancel.is_set():
            raise InstallCancelled("engine installation cancelled")
        if code != 0:
            raise InstallFailed(f"`{' '.join(cmd[:4])} …` failed (exit code {code}):\n" + "\n".join(tail))
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def install_engine(venv_dir: str | Path, python: str | None = None,
                   requirements: str | Path = ENGINE_DIR / "requirements.txt",
                   constraints: str | Path | None = ENGINE_DIR / "constraints.txt",
                   cancel: threading.Event | None = None,
                   pip_args: Sequence[str] = ()) -> Iterator[InstallProgress]:
    """Create ``venv_dir`` and pip-install the engine's requirements into it.

    Yields progress (fraction 0..1 and pip's latest line); the last message has
    fraction 1.0 and names the interpreter to put in the preferences. Worker thread.
    """
    venv = Path(venv_dir)
    base_python = python or sys.executable
    # 1. The environment (reused when it is already there: a re-install upgrades it).
    target = venv_python(venv)
    if not target.exists():
        yield InstallProgress(0.01, f"Creating a Python environment in {venv}")
        for line in _run([base_python, "-m", "venv", str(venv)], cancel):
            yield InstallProgress(0.02, line)
    if not target.exists():
        raise InstallFailed(f"{base_python} -m venv did not create {target}")
    # 2. pip install, progress counted in packages collected then installed.
    cmd = [str(target), "-m", "pip", "install", "--progress-bar", "off", "-r", str(requirements)]
    if constraints and Path(constraints).exists():
        cmd += ["-c", str(constraints)]
    cmd += list(pip_args)
    listed = Path(constraints) if constraints else Path(requirements)
    expected = max(1, _count_requirements(listed))
    collected = 0
    fraction = 0.05
    yield InstallProgress(fraction, "Installing the engine's packages (torch is a few GB; this takes a while)")
    for line in _run(cmd, cancel):
        if line.startswith("Collecting "):
            collected += 1
            fraction = 0.05 + 0.75 * min(1.0, collected / expected)
        elif line.startswith("Installing collected packages"):
            fraction = 0.85
        elif line.startswith("Successfully installed"):
            fraction = 0.98
        yield InstallProgress(fraction, line)
    yield InstallProgress(1.0, f"Engine installed: {target}")


def install_task(venv_dir: str | Path, *, report: Callable[[Any], None], cancel: threading.Event) -> str:
    """A `core.worker.Worker` task: `install_engine` with its steps reported; the new interpreter."""
    for step in install_engine(venv_dir, cancel=cancel):
        report(MsgProgress(step.fraction, step.line))
    return str(venv_python(venv_dir))
