"""Generate All on an engine shared by two artists (issue 22: "the same pacing applies to the shared
engine with several artists"). A real engine started as a studio would (``serve --token-file``,
a token per artist, ``--job-quota 2``, tiny models). While Blender's Generate All (Alice's token)
runs a film of 3 × the quota of shots, Bob, on a thread of his own with the add-on's client, keeps
his own quota of jobs in flight and fetches their frames. The quota is per token: Alice never has
more than hers in flight and is never refused, Bob is never refused for Alice's jobs, and both
get every frame. Blender 5.0 and 4.2 run this same file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bpy
import pytest
from blender_scenes import engine_python

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_generate_quota import QUOTA, SHOTS, assert_every_take_complete, build_long_film  # noqa: E402

pytestmark = [pytest.mark.engine,
              pytest.mark.skipif(engine_python() is None, reason="no engine environment: run `make test`")]

ROOT = Path(__file__).resolve().parents[2]
ALICE = "alice-token-shared-0123456789abcdef"
BOB = "bob-token-shared-0123456789abcdef00"
BOB_JOBS = 4  # 2 × his quota: he too submits the next as one ends


class SharedEngine:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def shared_engine(tmp_path_factory: pytest.TempPathFactory, vfmod) -> Iterator[SharedEngine]:
    """``python -m engine serve --token-file`` (alice, bob) with a job quota of 2 per token."""
    vfmod("core.client.process").shutdown_engine()
    tmp = tmp_path_factory.mktemp("shared-quota-engine")
    tokens = tmp / "tokens"
    tokens.write_text(f"alice:{ALICE}\nbob:{BOB}\n")
    tokens.chmod(0o600)
    port_file, log = tmp / "port", tmp / "engine.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("VIEWFINDER_ENGINE_TOKEN", None)
    env.pop("PYTHONPATH", None)  # Blender's, not the engine's
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [engine_python(), "-m", "engine", "serve", "--port", "0", "--port-file", str(port_file), "--data-dir",
             str(tmp / "data"), "--device", "cpu", "--token-file", str(tokens), "--job-quota", str(QUOTA)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    client_class = vfmod("core.client.http").EngineClient
    deadline = time.monotonic() + 180
    served = None
    while served is None:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the engine did not start: " + log.read_text()
        if port_file.exists() and port_file.read_text().strip():
            try:
                engine = SharedEngine(process, int(port_file.read_text()), log)
                if client_class(engine.url, ALICE, timeout=5).health()["status"] == "ok":
                    served = engine
            except Exception:  # noqa: BLE001 - still starting
                pass
        time.sleep(0.2)
    yield served
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


class Alice:
    """Every submit Blender's Generate All makes: (time, her jobs on the engine just before, the answer)."""

    def __init__(self, vfmod, monkeypatch: pytest.MonkeyPatch) -> None:
        self.submits: list[tuple[float, int, str]] = []
        self.first = threading.Event()
        client_class = vfmod("core.client.http").EngineClient
        submit = client_class.submit
        seen = self

        def recording(self, job):
            if self.token != ALICE:  # Bob's client is of the same class
                return submit(self, job)
            before = int(self.limits()["jobs_active"])
            try:
                job_id = submit(self, job)
            except Exception as exc:
                seen.submits.append((time.monotonic(), before, getattr(exc, "code", type(exc).__name__)))
                raise
            seen.submits.append((time.monotonic(), before, "queued"))
            seen.first.set()
            return job_id

        monkeypatch.setattr(client_class, "submit", recording)


class Bob(threading.Thread):
    """Another artist on the same engine: BOB_JOBS jobs of his own, at most his quota in flight,
    the next submitted as one ends, every frame fetched. Starts once Alice's first job is in."""

    def __init__(self, vfmod, url: str, tiny_models: Path, maps: Path, alice: Alice, out: Path) -> None:
        super().__init__(name="bob", daemon=True)
        self.client = vfmod("core.client.http").EngineClient(url, BOB, timeout=30)
        self.tiny_models, self.maps, self.alice, self.out = tiny_models, maps, alice, out
        self.submits: list[tuple[float, int, str]] = []  # (time, his jobs on the engine before, answer)
        self.ended: dict[str, tuple[float, dict[str, Any]]] = {}
        self.frames: list[Path] = []
        self.over_quota: Any = None
        self.error: BaseException | None = None

    def job(self, k: int, depth: str) -> dict[str, Any]:
        return {"shot": f"bob{k}", "prompt": "a harbour at dusk", "style_prompt": "film still",
                "negative_prompt": "blurry", "seed": 7000 + k, "steps": 6, "guidance_scale": 5.0,
                "width": 64, "height": 64, "batch_size": 2, "device": "cpu",
                "models": {"base": str(self.tiny_models / "sd15"),
                           "controlnet_depth": str(self.tiny_models / "controlnet-depth"),
                           "controlnet_pose": str(self.tiny_models / "controlnet-pose")},
                "frames": [{"frame": n, "depth": depth, "pose": None} for n in (1, 2)]}

    def submit(self, body: dict[str, Any]) -> str:
        before = int(self.client.limits()["jobs_active"])
        try:
            job_id = self.client.submit(body)
        except Exception as exc:
            self.submits.append((time.monotonic(), before, getattr(exc, "code", type(exc).__name__)))
            raise
        self.submits.append((time.monotonic(), before, "queued"))
        return job_id

    def run(self) -> None:
        try:
            assert self.alice.first.wait(180), "Alice's Generate All never submitted"
            # Alice's first shot's depth map (her maps are on disk by now), as Bob's own upload.
            depth = self.client.upload_blob(sorted(self.maps.glob("*/conditioning/depth/*.png"))[0].read_bytes())
            bodies = [self.job(k, depth) for k in range(BOB_JOBS)]
            flying: list[str] = []
            deadline = time.monotonic() + 300
            while bodies or flying:
                assert time.monotonic() < deadline, f"Bob's jobs did not end: {self.ended}"
                while bodies and len(flying) < QUOTA:
                    flying.append(self.submit(bodies.pop(0)))
                    if len(flying) == QUOTA and self.over_quota is None:
                        # One past his own quota: refused, and the refusal counts his jobs, not Alice's.
                        try:
                            self.client.submit(self.job(99, depth))
                            self.over_quota = "accepted"
                        except Exception as exc:  # noqa: BLE001 - the 429 is the point
                            self.over_quota = exc
                for job_id in list(flying):
                    status = self.client.status(job_id)
                    if status["status"] in ("done", "failed", "cancelled"):
                        flying.remove(job_id)
                        self.ended[job_id] = (time.monotonic(), status)
                        for n in status["frames"]:
                            path = self.out / f"{job_id}-{n:04d}.png"
                            self.frames.append(Path(self.client.fetch_frame(job_id, n, str(path), size=(64, 64))))
                time.sleep(0.1)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_two_artists_share_one_engine_each_within_their_own_quota(tmp_path, tiny_models, shared_engine, vfmod,
                                                                   monkeypatch):
    monkeypatch.setenv("VIEWFINDER_ENGINE_URL", shared_engine.url)
    monkeypatch.setenv("VIEWFINDER_ENGINE_TOKEN", ALICE)
    scene = build_long_film(tmp_path, tiny_models)
    alice = Alice(vfmod, monkeypatch)
    (tmp_path / "bob").mkdir()
    bob = Bob(vfmod, shared_engine.url, tiny_models, tmp_path / "viewfinder", alice, tmp_path / "bob")
    bob.start()
    try:
        started = time.monotonic()
        assert bpy.ops.viewfinder.generate(shot="") == {"FINISHED"}
        alice_done = time.monotonic()
    finally:
        bob.join(timeout=300)
        vfmod("core.client.process").shutdown_engine()
    assert not bob.is_alive(), "Bob's thread never ended"
    assert bob.error is None, repr(bob.error)

    # Alice: every take placed, nothing failed, never more than her quota in flight, never refused.
    assert_every_take_complete(scene, SHOTS)
    assert len(alice.submits) == SHOTS and all(answer == "queued" for _, _, answer in alice.submits), alice.submits
    assert max(before for _, before, _ in alice.submits) <= QUOTA - 1, alice.submits
    # Bob: every job done and every frame fetched whole; each submit within his quota accepted,
    # whatever Alice had in flight (a quota shared between the tokens refuses him here).
    assert len(bob.submits) == BOB_JOBS and all(answer == "queued" for _, _, answer in bob.submits), bob.submits
    assert max(before for _, before, _ in bob.submits) <= QUOTA - 1, bob.submits
    assert [s["status"] for _, s in bob.ended.values()] == ["done"] * BOB_JOBS, bob.ended
    assert len(bob.frames) == 2 * BOB_JOBS and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in bob.frames)
    # His one submit past his own quota is his own 429: it counts his 2 jobs (a wait, not an error).
    refusal = bob.over_quota
    assert getattr(refusal, "status", None) == 429 and refusal.code == "queue_full", refusal
    assert f"already has {QUOTA} jobs" in refusal.message and refusal.retry_after == 1.0, refusal.message
    # The two really overlapped: Bob submitted while Alice's run was still submitting, and his
    # first job ended while her run was still going (not starved behind her film).
    first_bob = min(t for t, _, _ in bob.submits)
    assert started < first_bob < max(t for t, _, _ in alice.submits), (first_bob, alice.submits)
    assert min(t for t, _ in bob.ended.values()) < alice_done, "Bob's first job waited for Alice's whole film"
    print(f"Alice's film {alice_done - started:.1f} s; Bob's last job ended "
          f"{max(t for t, _ in bob.ended.values()) - started:.1f} s in")
