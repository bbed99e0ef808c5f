"""A studio's GPU pool (issue 26) on a real two-node Ray cluster on this machine.

``serve-ray`` starts the head (one CPU: one replica) and a second ``ray start`` joins it (one CPU:
one more replica), so autoscaling between 1 and 2 replicas puts the second on the other node.
The replicas run the stand-in model (``--simulate-frame-s``: a frame is a sleep, engine/ray/
standin.py) over tiny models' paths, so everything around the model is real: three artists'
tokens, quotas, the ingress and its journal, Serve's multiplexing and autoscaling, the shared
cache. One cluster for the module; the tests run in order, the node's removal last.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_testlib import depth_png, make_job, read_png

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ray_engine import RayEngine, ray_missing_reason, session_processes  # noqa: E402

pytestmark = pytest.mark.engine
_MISSING = ray_missing_reason(sys.executable)
if _MISSING:
    pytest.skip(_MISSING, allow_module_level=True)

FRAME_S = 0.2  # the stand-in's time per frame
ARTISTS = ("ana", "ben", "cai")
# Every node of the cluster holds its token (Ray's token authentication), given here rather than
# read from ~/.ray/auth_token, which other clusters on this machine may write.
CLUSTER_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
# Fast failure detection on this one machine: a lost node is declared dead after ~3 s, not ~15 s.
HEAD_ENV = {**CLUSTER_ENV, "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


class Pool:
    """The serve-ray engine, the second node, and a client per artist."""

    def __init__(self, engine: RayEngine, node: subprocess.Popen[bytes], clients: dict[str, Any],
                 models: list[dict[str, str]]) -> None:
        self.engine, self.node, self.clients, self.models = engine, node, clients, models

    def replicas(self) -> dict[int, int]:
        """Worker replica processes now: pid -> the session (node) they run in."""
        found = {}
        for session in (self.engine.process.pid, self.node.pid):
            for pid in session_processes(session):
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if title.startswith(b"ray::ServeReplica:viewfinder:Worker"):
                    found[pid] = session
        return found

    def shot(self, artist: str, frames: int, name: str, model: int = 0, seed: int = 0) -> dict[str, Any]:
        client = self.clients[artist]
        maps = [{"frame": k, "depth": client.upload_blob(depth_png(0.03 * k + 0.1 * (seed % 7)))}
                for k in range(1, frames + 1)]
        return make_job(self.models[model], maps, shot=name, seed=seed, steps=2)


def join_node(engine: RayEngine, workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A second Ray node on this machine (`ray start --address`), in a session of its own, with the
    head's token and temp folder (``env``)."""
    address = next(line.split()[-1] for line in engine.log_path.read_text().splitlines()
                   if line.startswith("Ray cluster at "))
    log = open(workdir / "node2.log", "wb")  # noqa: SIM115 - kept open for the node's life
    node = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--address", address, "--num-cpus", "1",
         "--num-gpus", "0", "--object-store-memory", str(80 * 1024**2), "--disable-usage-stats", "--block"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, **env, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"})
    deadline = time.monotonic() + 180
    while b"Ray runtime started" not in (workdir / "node2.log").read_bytes():
        assert node.poll() is None and time.monotonic() < deadline, (workdir / "node2.log").read_text()
        time.sleep(0.5)
    return node


def kill_session(session: int) -> None:
    """Every process of a session, with SIGKILL (a node pulled out, not shut down)."""
    for _ in range(20):
        left = session_processes(session)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def model_copies(tiny_models: dict[str, str], root: Path, count: int) -> list[dict[str, str]]:
    """``count`` checkpoints: copies of the tiny base model (distinct paths, distinct pipelines)."""
    models = []
    for i in range(count):
        base = root / f"checkpoint-{i}"
        if not base.exists():
            shutil.copytree(tiny_models["base"], base)
        models.append({**tiny_models, "base": str(base)})
    return models


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, core: types.SimpleNamespace,
         tiny_models: dict[str, str]) -> Iterator[Pool]:
    work = tmp_path_factory.mktemp("ray-pool")
    tokens = {name: secrets.token_urlsafe(18) for name in ARTISTS}
    token_file = work / "tokens"
    token_file.write_text("".join(f"{name}:{token}\n" for name, token in tokens.items()))
    token_file.chmod(0o600)
    # The cluster's own temp folder: `ray start` records the cluster it joined in <temp>/ray/
    # ray_current_cluster, where every later ray.init() on the machine would otherwise look.
    env = {**HEAD_ENV, "RAY_TMPDIR": str(Path(tempfile.mkdtemp(prefix="vfpool-", dir="/tmp")))}
    engine = RayEngine(sys.executable, work, replicas=1, env=env, extra_args=(
        "--token-file", str(token_file), "--min-replicas", "1", "--max-replicas", "2",
        "--upscale-delay-s", "0", "--downscale-delay-s", "2", "--look-back-period-s", "1",
        "--metrics-interval-s", "0.5", "--max-pipelines", "2", "--job-quota", "16",
        "--simulate-frame-s", str(FRAME_S), "--simulate-load-s", "0.3"))
    engine.start()
    node: subprocess.Popen[bytes] | None = None
    try:
        node = join_node(engine, work, env)
        clients = {name: core.client.EngineClient(engine.url, token=token, timeout=30)
                   for name, token in tokens.items()}
        yield Pool(engine, node, clients, model_copies(tiny_models, work, 3))
    finally:
        if node is not None:
            kill_session(node.pid)
        engine.stop()
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def wait_all(client: Any, ids: list[str], timeout: float = 240.0) -> dict[str, dict[str, Any]]:
    """Poll until every job has ended; connection errors (an ingress restarting) are waited out."""
    deadline, ended = time.monotonic() + timeout, {}
    while len(ended) < len(ids):
        assert time.monotonic() < deadline, f"jobs not ended in {timeout} s: {set(ids) - set(ended)}"
        try:
            found = client.statuses([i for i in ids if i not in ended]) or {}
        except Exception:  # noqa: BLE001 - the ingress is restarting; a job must not hang meanwhile
            found = {}
        ended.update({i: s for i, s in found.items() if s["status"] not in ("queued", "running")})
        time.sleep(0.1)
    return ended


def wait_until(test: Any, what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = test()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not reached in {timeout} s: {what}")


def submit_waiting(client: Any, body: dict[str, Any], refused: list[int]) -> str:
    """Submit as the add-on does past its quota: a 429 is a wait of Retry-After, then again."""
    while True:
        try:
            return str(client.submit(body))
        except Exception as exc:  # noqa: BLE001 - only the quota's refusal is waited out
            if not getattr(exc, "quota_full", False):
                raise
            refused.append(1)
            time.sleep(getattr(exc, "retry_after", None) or 1.0)


def frames_whole(client: Any, status: dict[str, Any], folder: Path) -> int:
    """Every frame of a job fetched and opened: how many."""
    for n in status["frames"]:
        image = read_png(client.fetch_frame(status["id"], n, str(folder / f"{status['id']}-{n}.png")))
        assert image.shape == (64, 64, 3) and len({tuple(p) for p in image.reshape(-1, 3)}) == 1
    return len(status["frames"])


def test_a_replica_keeps_its_last_pipelines_and_says_when_it_loads(pool: Pool) -> None:
    """Two pipelines per replica: A, B, A, C (B, least recently used, is unloaded), A, B."""
    client = pool.clients["ana"]
    assert len(pool.replicas()) == 1, pool.replicas()  # idle: the minimum
    units = []
    for i, model in enumerate([0, 1, 0, 2, 0, 1]):
        job_id = client.submit(pool.shot("ana", 1, f"lru{i}", model=model, seed=100 + i))
        (unit,) = wait_all(client, [job_id])[job_id]["replicas"]
        units.append(unit)
    assert [u["loaded"] for u in units] == [True, True, False, True, False, True], units
    assert len({u["replica"] for u in units}) == 1
    # Each unit names its pipeline (Serve's multiplexed model id): one id per checkpoint.
    ids = [u["model"] for u in units]
    assert ids[0] == ids[2] == ids[4] and ids[1] == ids[5] and len(set(ids)) == 3, ids


def test_small_artists_finish_long_before_a_big_generate_all(pool: Pool) -> None:
    """40, 5 and 5 shots: the big one's first 16 (its quota) are queued before the others arrive."""
    ids: dict[str, list[str]] = {name: [] for name in ARTISTS}
    refused: dict[str, list[int]] = {name: [] for name in ARTISTS}

    def generate_all(artist: str, shots: int) -> None:
        for i in range(shots):
            body = pool.shot(artist, 2, f"{artist}-{i}", seed=1000 * (ARTISTS.index(artist) + 1) + i)
            ids[artist].append(submit_waiting(pool.clients[artist], body, refused[artist]))

    big = threading.Thread(target=generate_all, args=("ana", 40))
    big.start()
    wait_until(lambda: len(ids["ana"]) >= 16, "the big Generate All at its quota")
    small = [threading.Thread(target=generate_all, args=(name, 5)) for name in ("ben", "cai")]
    for thread in small:
        thread.start()
    for thread in (*small, big):
        thread.join(timeout=300)
    ended = {name: wait_all(pool.clients[name], ids[name]) for name in ARTISTS}
    assert all(s["status"] == "done" for found in ended.values() for s in found.values())
    # The big one waited at its quota instead of failing; the small ones never met theirs.
    assert refused["ana"] and not refused["ben"] and not refused["cai"]
    big_ends = sorted(s["finished"] for s in ended["ana"].values())
    small_ends = sorted(s["finished"] for name in ("ben", "cai") for s in ended[name].values())
    # Round robin: every small job ends while the big one has finished fewer than 10 of 40
    # (first come, first served: after its 16 queued ones).
    assert small_ends[-1] < big_ends[9], (sum(e < small_ends[-1] for e in big_ends), "big jobs ended first")


def test_the_pool_scales_up_under_a_queue_and_down_when_idle(pool: Pool) -> None:
    wait_until(lambda: len(pool.replicas()) == 1, "1 replica when idle")
    client = pool.clients["ben"]
    ids = [client.submit(pool.shot("ben", 5, f"queue{i}", seed=300 + i)) for i in range(8)]
    grown = wait_until(lambda: pool.replicas() if len(pool.replicas()) == 2 else None, "2 replicas under a queue")
    # The second replica went where there was room: the other node.
    assert set(grown.values()) == {pool.engine.process.pid, pool.node.pid}, grown
    assert all(s["status"] == "done" for s in wait_all(client, ids).values())
    wait_until(lambda: len(pool.replicas()) == 1, "back to 1 replica when idle")


def test_jobs_resume_after_the_ingress_restarts(pool: Pool, tmp_path: Path) -> None:
    client = pool.clients["cai"]
    ids = [client.submit(pool.shot("cai", 6, f"restart{i}", seed=400 + i)) for i in range(3)]
    before = wait_until(lambda: (s := client.status(ids[0]))["frames_done"] >= 2 and s, "frames before the kill")
    ingress = [pid for pid in session_processes(pool.engine.process.pid)
               if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ServeReplica:viewfinder:Ingress")]
    assert len(ingress) == 1
    os.kill(ingress[0], signal.SIGKILL)
    ended = wait_all(client, ids)
    assert [ended[i]["status"] for i in ids] == ["done"] * 3, ended
    assert sum(frames_whole(client, ended[i], tmp_path) for i in ids) == 18
    # The first job was resumed by the new ingress: what was finished before came from the cache.
    first = ended[ids[0]]
    assert any("ingress restarted" in e for e in first["events"]), first["events"]
    assert set(before["frames"]) <= set(first["cached_frames"]), (before["frames"], first["cached_frames"])


def test_a_worker_node_removed_mid_job_loses_no_frame(pool: Pool, tmp_path: Path) -> None:
    client = pool.clients["ana"]
    ids = [client.submit(pool.shot("ana", 6, f"node{i}", seed=500 + i)) for i in range(12)]

    def running_on_node2() -> dict[str, Any] | None:
        on_node2 = {pid for pid, session in pool.replicas().items() if session == pool.node.pid}
        for status in (client.statuses(ids) or {}).values():
            (unit,) = status["replicas"] or [{}]
            if unit.get("status") == "running" and unit.get("pid") in on_node2 and status["frames_done"] >= 1:
                return status
        return None

    victim = wait_until(running_on_node2, "a job half done on the second node")
    kill_session(pool.node.pid)
    ended = wait_all(client, ids, timeout=300)
    assert all(s["status"] == "done" for s in ended.values()), ended
    assert sum(frames_whole(client, s, tmp_path) for s in ended.values()) == 12 * 6  # no frame lost
    lost = ended[victim["id"]]
    assert any("was lost" in e for e in lost["events"]), lost["events"]
    assert set(victim["frames"]) <= set(lost["replicas"][0]["from_cache"]), (victim["frames"], lost["replicas"])
