"""The cache quota while writing and a token's share of it, and `cache prune` never evicting what
a running job still reads (issue 22). Engines of their own, loopback, tiny models; about a minute."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from engine_testlib import ROOT, depth_png, make_job, wait_for
from test_shared_engine import serve

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789ab"


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(url + "/health", timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise AssertionError("the engine did not come up")


def test_uploads_past_the_quota_or_a_tokens_share_are_refused_as_they_come(core: Any, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice:{ALICE}\nbob:{BOB}\n")
    tokens.chmod(0o600)
    served = serve(tmp_path, "--token-file", str(tokens), "--cache-quota", "2M")
    try:
        wait_up(served.url)
        alice = core.client.EngineClient(served.url, ALICE, timeout=10)
        bob = core.client.EngineClient(served.url, BOB, timeout=10)
        refused = None
        for n in range(20):  # 300 kB each: alice's half share (1 MB) is gone after three
            try:
                alice.upload_blob(os.urandom(300_000))
            except core.client.EngineError as exc:
                refused = (n, exc.status, exc.code)
                break
        assert refused is not None and refused[1:] == (507, "token_cache_full") and refused[0] <= 4, refused
        stored = []
        with pytest.raises(core.client.EngineError) as info:  # bob has his own share, then the quota is full
            for _ in range(20):
                stored.append(bob.upload_blob(os.urandom(300_000)))
        assert info.value.status == 507 and info.value.code in ("token_cache_full", "cache_full")
        assert all(bob.has_blob(sha) for sha in stored)
        held = sum(p.stat().st_size for p in (served.data_dir / "blobs").iterdir())
        assert held <= 2 * 1024 * 1024
    finally:
        served.process.terminate()
        served.process.wait(timeout=30)


def test_cache_prune_never_evicts_the_blobs_of_a_running_job(core: Any, tmp_path: Path,
                                                              tiny_models: dict[str, str]) -> None:
    served = serve(tmp_path, "--token", ALICE)
    try:
        wait_up(served.url)
        client = core.client.EngineClient(served.url, ALICE, timeout=30)
        frames = [{"frame": k, "depth": client.upload_blob(depth_png(k / 40)), "pose": None} for k in range(1, 25)]
        job_id = client.submit(make_job(tiny_models, frames, steps=6, batch_size=1))
        while client.status(job_id)["frames_done"] < 1:
            time.sleep(0.1)
        assert client.status(job_id)["status"] == "running"
        pruned = subprocess.run([sys.executable, "-m", "engine", "cache", "prune", "--data-dir",
                                 str(served.data_dir), "--quota", "0"], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        assert pruned.returncode == 0, pruned.stderr
        assert all(client.has_blob(f["depth"]) for f in frames)
        status = wait_for(client, job_id, timeout=300)
        assert status["status"] == "done" and status["frames_done"] == len(frames), status.get("error")
    finally:
        served.process.terminate()
        served.process.wait(timeout=30)
