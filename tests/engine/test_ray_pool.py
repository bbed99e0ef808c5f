"""A studio's GPU pool (issue 26) on a real two-node Ray cluster on this machine.

``serve-ray`` starts the head (one CPU: one replica) and a second ``ray start`` joins it (one CPU:
one more replica; tests/ray_engine.py), so autoscaling between 1 and 2 replicas puts the second on
the other node.
The replicas run the stand-in model (``--simulate-frame-s``: a frame is a sleep, engine/ray/
standin.py) over tiny models' paths, so everything around the model is real: three artists'
tokens, quotas, the ingress and its journal, Serve's multiplexing and autoscaling, the shared
cache. One cluster for the module; the tests run in order, the ingress's restart last. (A worker
node removed mid-job is tested with the tiny models themselves: tests/engine/test_ray_serve.py.)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_testlib import depth_png, make_job, read_png

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ray_engine import RayEngine, ray_missing_reason  # noqa: E402

pytestmark = pytest.mark.engine
_MISSING = ray_missing_reason(sys.executable)
if _MISSING:
    pytest.skip(_MISSING, allow_module_level=True)

FRAME_S = 0.2  # the stand-in's time per frame
ARTISTS = ("ana", "ben", "cai")


class Pool:
    """The serve-ray engine (with its second node) and a client per artist."""

    def __init__(self, engine: RayEngine, clients: dict[str, Any], models: list[dict[str, str]]) -> None:
        self.engine, self.clients, self.models = engine, clients, models
        self.head, self.node = engine.process.pid, engine.nodes[0].pid  # the two nodes' sessions

    def replicas(self) -> dict[int, int]:
        """Worker replica processes now: pid -> the session (node) they run in."""
        return self.engine.replica_pids()

    def shot(self, artist: str, frames: int, name: str, model: int = 0, seed: int = 0) -> dict[str, Any]:
        client = self.clients[artist]
        maps = [{"frame": k, "depth": client.upload_blob(depth_png(0.03 * k + 0.1 * (seed % 7)))}
                for k in range(1, frames + 1)]
        return make_job(self.models[model], maps, shot=name, seed=seed, steps=2)


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
    # One CPU on the head and one on the joined node: one replica each at the most.
    engine = RayEngine(sys.executable, work, replicas=1, worker_nodes=1, extra_args=(
        "--token-file", str(token_file), "--min-replicas", "1", "--max-replicas", "2",
        "--upscale-delay-s", "0", "--downscale-delay-s", "2", "--look-back-period-s", "1",
        "--metrics-interval-s", "0.5", "--max-pipelines", "2", "--job-quota", "16",
        "--simulate-frame-s", str(FRAME_S), "--simulate-load-s", "0.3"))
    engine.start()
    try:
        clients = {name: core.client.EngineClient(engine.url, token=token, timeout=30)
                   for name, token in tokens.items()}
        yield Pool(engine, clients, model_copies(tiny_models, work, 3))
    finally:
        engine.stop()


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
    """Serve's autoscaler (1-2 replicas), seen both in Serve's own status (``serve.status()``:
    replicas by state) and in the replica processes on the two nodes."""

    def replicas_are(count: int) -> dict[int, int] | None:
        """The replica processes, once Serve reports exactly ``count`` replicas, all running, and
        ``count`` processes are up; else None."""
        found = pool.replicas()
        return found if pool.engine.serve_replicas() == {"RUNNING": count} and len(found) == count else None

    wait_until(lambda: replicas_are(1), "1 replica when idle")
    client = pool.clients["ben"]
    ids = [client.submit(pool.shot("ben", 5, f"queue{i}", seed=300 + i)) for i in range(12)]
    grown = wait_until(lambda: replicas_are(2), "2 replicas under a queue")
    # The second replica went where there was room: the other node.
    assert set(grown.values()) == {pool.head, pool.node}, grown
    ended = wait_all(client, ids)
    assert all(s["status"] == "done" for s in ended.values())
    # Both replicas ran units of the queue.
    assert len({u["replica"] for s in ended.values() for u in s["replicas"]}) == 2, ended
    wait_until(lambda: replicas_are(1), "back to 1 replica when idle")


def test_jobs_resume_after_the_ingress_restarts(pool: Pool, tmp_path: Path) -> None:
    """Last in this module: the ingress killed (SIGKILL) with three jobs in flight."""
    client = pool.clients["cai"]
    ids = [client.submit(pool.shot("cai", 6, f"restart{i}", seed=400 + i)) for i in range(3)]
    before = wait_until(lambda: (s := client.status(ids[0]))["frames_done"] >= 2 and s, "frames before the kill")
    ingress = list(pool.engine.replica_pids("Ingress"))
    assert len(ingress) == 1
    os.kill(ingress[0], signal.SIGKILL)
    ended = wait_all(client, ids)
    assert [ended[i]["status"] for i in ids] == ["done"] * 3, ended
    assert sum(frames_whole(client, ended[i], tmp_path) for i in ids) == 18
    # The first job was resumed by the new ingress: what was finished before came from the cache.
    first = ended[ids[0]]
    assert any("ingress restarted" in e for e in first["events"]), first["events"]
    assert set(before["frames"]) <= set(first["cached_frames"]), (before["frames"], first["cached_frames"])
