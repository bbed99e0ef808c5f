"""A real ``python -m engine serve-ray`` process on a local Ray cluster, for the tests.

One per pytest session (Ray takes ~30 s to start and ~2 GB for two tiny replicas); it is
stopped with its whole local cluster when the session ends. Used by tests/engine (engine venv)
and tests/blender (the add-on against a Ray engine).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ray_missing_reason(python: str) -> str | None:
    """Why the Ray tests cannot run with this engine interpreter, or None when they can."""
    if not Path(python).exists():
        return f"no engine interpreter at {python} (set VIEWFINDER_TEST_ENGINE_PYTHON)"
    probe = subprocess.run([python, "-c", "import ray.serve"], capture_output=True, timeout=120)
    if probe.returncode:
        return ("ray[serve] is not installed in the engine environment: pip install -r "
                "engine/requirements-ray.txt -c engine/constraints-ray.txt (make setup does)")
    return None


def session_processes(session: int) -> list[int]:
    """The live processes of a session (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session:
                    pids.append(int(entry))
            except OSError:  # gone meanwhile, or not ours to look at
                pass
    return pids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RayEngine:
    """``python -m engine serve-ray`` with N CPU replicas, started and stopped like a user would."""

    def __init__(self, python: str, data_dir: Path, replicas: int = 2, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, startup_timeout: float = 240.0, device: str = "cpu") -> None:
        self.python = python
        self.device = device
        self.data_dir = data_dir
        self.replicas = replicas
        self.extra_args = extra_args
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.token = secrets.token_urlsafe(16)
        self.port = free_port()
        self.log_path = data_dir / "serve-ray.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RayEngine:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
               **self.env}
        cmd = [self.python, "-m", "engine", "serve-ray", "--replicas", str(self.replicas),
               "--num-cpus", str(self.replicas), "--cpus-per-replica", "1", "--device", self.device,
               "--max-pipelines", "4", "--port", str(self.port), "--token", self.token,
               "--data-dir", str(self.data_dir / "data"), *self.extra_args]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve-ray exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if json.loads(response.read()).get("status") == "ok":
                        return self
            except OSError:
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"serve-ray did not answer within {self.startup_timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM (the engine takes its local cluster down), then SIGKILL whatever of that cluster
        is left: every Ray process it started is in its session. Other Ray clusters on the
        machine (another test run, a user's) are left alone, unlike ``ray stop``."""
        if self.process is None:
            return
        session = self.process.pid  # started with start_new_session: its pid is the session id
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while (left := session_processes(session)) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
