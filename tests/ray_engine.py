"""A real ``python -m engine serve-ray`` process on a local Ray cluster, for the tests.

One per pytest session (Ray takes ~30 s to start and ~2 GB for two tiny replicas); it is
stopped with its whole local cluster when the session ends. Used by tests/engine (engine venv)
and tests/blender (the add-on against a Ray engine).

With ``worker_nodes``, more Ray nodes join the engine's cluster on this machine (a second
``ray start --address``, each with one CPU and in a session of its own), as a studio's GPU
machines join the head: the replicas spread over the nodes, and a node can be pulled out
(``remove_node``) mid-job.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

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


def kill_session(session: int, timeout: float = 10.0) -> None:
    """SIGKILL every process of a session until none is left (a Ray node pulled out, not shut down)."""
    deadline = time.monotonic() + timeout
    while (left := session_processes(session)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RayEngine:
    """``python -m engine serve-ray`` with N CPU replicas, started and stopped like a user would."""

    def __init__(self, python: str, data_dir: Path, replicas: int = 2, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, startup_timeout: float = 240.0, device: str = "cpu",
                 worker_nodes: int = 0) -> None:
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
        # Worker nodes of one CPU each; the head keeps the CPUs of the other replicas.
        self.worker_nodes = worker_nodes
        self.head_cpus = max(1, replicas - worker_nodes) if worker_nodes else replicas
        self.nodes: list[subprocess.Popen[bytes]] = []
        self._temp_dir: str | None = None
        self._watch: ServeWatch | None = None
        if worker_nodes:
            self.env = {
                # Every node holds the cluster's token (Ray's token authentication), given here
                # rather than read from ~/.ray/auth_token, which other clusters on this machine may write.
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                # A lost node is declared dead after ~3 s, not ~15 s: one machine, no network between.
                "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                # The joined node's replicas at normal priority too, as serve-ray sets for the head's
                # (Ray's default is nice 15): on a busy machine the two would not be alike.
                "RAY_worker_niceness": "0",
                **self.env}
            if "RAY_TMPDIR" not in self.env:
                # The cluster's own temp folder: `ray start` records the cluster it joined in
                # <temp>/ray/ray_current_cluster, where every later ray.init() on the machine would
                # otherwise look. Short, under /tmp: Ray's socket paths must stay under 108 bytes.
                self._temp_dir = tempfile.mkdtemp(prefix="vfray-", dir="/tmp")
                self.env["RAY_TMPDIR"] = self._temp_dir

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
                **self.env}

    def start(self) -> RayEngine:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [self.python, "-m", "engine", "serve-ray", "--replicas", str(self.replicas),
               "--num-cpus", str(self.head_cpus), "--cpus-per-replica", "1", "--device", self.device,
               "--max-pipelines", "4", "--port", str(self.port), f"--token={self.token}",
               "--data-dir", str(self.data_dir / "data"), *self.extra_args]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, cwd=ROOT, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"serve-ray exited with {self.process.returncode}:\n{self.log_tail()}")
            # The worker nodes join as soon as the head is up: replicas that fit only there wait for them.
            if len(self.nodes) < self.worker_nodes and (address := self.cluster_address()):
                try:
                    self.nodes.extend(self._join(address, len(self.nodes), deadline)
                                      for _ in range(self.worker_nodes - len(self.nodes)))
                except RuntimeError:
                    self.stop()
                    raise
            # Ready once serve.run has returned (every replica of the deployment up, a joined node's
            # too): the ingress answers /health as soon as one replica is.
            if self._log_has("Viewfinder engine (Ray Serve) ready on"):
                try:
                    with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                        if json.loads(response.read()).get("status") == "ok":
                            return self
                except OSError:
                    pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"serve-ray did not answer within {self.startup_timeout} s:\n{self.log_tail()}")

    def _log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def _log_has(self, start: str) -> bool:
        return any(line.startswith(start) for line in self._log_lines())

    def cluster_address(self) -> str | None:
        """The head's GCS address, once serve-ray has printed it."""
        return next((line.split()[-1] for line in self._log_lines() if line.startswith("Ray cluster at ")), None)

    def _join(self, address: str, index: int, deadline: float) -> subprocess.Popen[bytes]:
        """One more node (`ray start --address`, one CPU, no GPU) in a session of its own."""
        log_path = self.data_dir / f"node{index + 2}.log"
        with open(log_path, "wb") as log:
            node = subprocess.Popen(
                [str(Path(self.python).parent / "ray"), "start", "--address", address, "--num-cpus", "1",
                 "--num-gpus", "0", "--object-store-memory", str(80 * 1024**2), "--disable-usage-stats",
                 "--block"], cwd=ROOT, env=self._env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while b"Ray runtime started" not in log_path.read_bytes():
            if node.poll() is not None or time.monotonic() > deadline:
                kill_session(node.pid)
                raise RuntimeError(f"ray start --address {address} did not join:\n{log_path.read_text()}")
            time.sleep(0.5)
        return node

    def remove_node(self, node: subprocess.Popen[bytes]) -> None:
        """A worker node pulled out: its raylet and every replica on it killed (SIGKILL) at once."""
        kill_session(node.pid)
        node.wait(timeout=10)

    def replica_pids(self, deployment: str = "Worker") -> dict[int, int]:
        """The live replica processes of a deployment (Worker, Ingress): pid -> the session
        (the head's: the engine's pid; a worker node's: its ``ray start`` pid) it runs in."""
        found = {}
        sessions = [p.pid for p in (self.process, *self.nodes) if p is not None]
        prefix = f"ray::ServeReplica:viewfinder:{deployment}".encode()
        for session in sessions:
            for pid in session_processes(session):
                try:
                    if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(prefix):
                        found[pid] = session
                except OSError:
                    continue
        return found

    def serve_replicas(self, deployment: str = "Worker") -> dict[str, int] | None:
        """Serve's own count of the deployment's replicas by state ({"RUNNING": 2, ...}), from
        ``serve.status()`` in a driver connected to the cluster (started at the first call, then
        sampled every 0.5 s); None until its first sample."""
        address = self.cluster_address()
        assert address, "the cluster is not up"
        if self._watch is None:
            self._watch = ServeWatch(self.python, address, self._env())
        return self._watch.latest().get(deployment)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self._log_lines()[-lines:]) or "(no log)"

    def stop(self) -> None:
        """SIGTERM (the engine takes its local cluster down), then SIGKILL whatever of that cluster
        is left: every Ray process it started is in its session. Other Ray clusters on the
        machine (another test run, a user's) are left alone, unlike ``ray stop``."""
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        for node in self.nodes:  # the worker nodes first: they would otherwise wait for the lost head
            self.remove_node(node)
        self.nodes = []
        if self.process is not None:
            session = self.process.pid  # started with start_new_session: its pid is the session id
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
            kill_session(session)
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


# A driver on the cluster that prints Serve's replica counts per deployment twice a second, as
# one JSON line; it ends with its parent (the tests), or when the cluster goes.
_WATCH = """
import json, os, sys, time
import ray
from ray import serve
parent = os.getppid()
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
while os.getppid() == parent:
    try:
        app = serve.status().applications.get("viewfinder")
    except Exception:
        break
    deployments = app.deployments.items() if app else ()
    print(json.dumps({name: {str(getattr(state, "value", state)): count for state, count in d.replica_states.items()}
                      for name, d in deployments}), flush=True)
    time.sleep(0.5)
"""


class ServeWatch:
    """``serve.status()`` sampled from a driver process; ``latest()`` is its last sample."""

    def __init__(self, python: str, address: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([python, "-c", _WATCH, address], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        self._latest: dict[str, Any] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self._latest = json.loads(line)
            except ValueError:
                continue

    def latest(self) -> dict[str, Any]:
        return dict(self._latest)

    def stop(self) -> None:
        kill_session(self.process.pid)
        self.process.wait(timeout=10)
