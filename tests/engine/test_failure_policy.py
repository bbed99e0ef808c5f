"""The failure policy: a job group that raises fails exactly its own jobs (in process, no model)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from engine_testlib import make_job

from engine.contract.schema import JobRequest
from engine.jobs.context import RunContext
from engine.jobs.job import Job
from engine.jobs.manager import JobManager, LocalExecutor
from engine.storage import Storage

# A request as the engine keeps it (the manager reads the blobs its queued and running jobs name).
REQUEST = JobRequest.model_validate(make_job({"base": "base", "depth": "depth", "pose": None}, [{"frame": 1}]))


def add_job(manager: JobManager, job_id: str, status: str) -> Job:
    job = Job(id=job_id, request=REQUEST, refs={}, lora=None, key=None, frame_keys={1: "f" * 64})  # type: ignore[arg-type]
    job.status = status
    manager.jobs[job_id] = job
    return job


class FailingExecutor(LocalExecutor):
    """Runs a group as the engine does, up to its first pipeline call, which falls over."""

    def run(self, context: RunContext, group: list[Job]) -> None:
        group[0].status = "running"
        raise RuntimeError("the pipeline fell over")


def test_a_failing_group_fails_its_jobs_and_no_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = JobManager(Storage(tmp_path), default_device="cpu", executor=FailingExecutor())
    leader, companion = add_job(manager, "leader", "queued"), add_job(manager, "companion", "queued")
    # Running, but not in the failing group: a job another executor runs (the Ray ingress runs
    # jobs side by side), or one whose group has not noticed the failure yet.
    elsewhere = add_job(manager, "elsewhere", "running")
    waiting = add_job(manager, "waiting", "queued")

    def companions(running: list[Job]) -> list[Job]:
        companion.status = "running"
        return [companion] if running[0] is leader else []

    monkeypatch.setattr(manager, "_flow_companions", companions)
    manager.start()
    try:
        manager._queue.put("leader")
        deadline = time.monotonic() + 10
        while companion.status != "failed" and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        manager.stop()
    assert (leader.status, companion.status) == ("failed", "failed")
    assert leader.error == companion.error and leader.error is not None
    assert leader.error["code"] == "engine_error" and "the pipeline fell over" in leader.error["message"]
    assert (elsewhere.status, elsewhere.error) == ("running", None)
    assert (waiting.status, waiting.error) == ("queued", None)


class JoinThenFailExecutor(LocalExecutor):
    """A FLOW run that a queued job joins mid-run (``context.companions``), then falls over."""

    def run(self, context: RunContext, group: list[Job]) -> None:
        group[0].status = "running"
        context.companions([group[0]])
        raise RuntimeError("the pipeline fell over after a shot joined")


def test_a_job_that_joined_the_failing_group_fails_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = JobManager(Storage(tmp_path), default_device="cpu", executor=JoinThenFailExecutor())
    leader, late = add_job(manager, "leader", "queued"), add_job(manager, "late", "queued")
    elsewhere = add_job(manager, "elsewhere", "running")
    calls: list[str] = []

    def companions(running: list[Job]) -> list[Job]:
        calls.append(running[0].id)
        if len(calls) == 1:  # nothing to interleave when the leader is taken off the queue
            return []
        late.status = "running"  # queued since, and joins at its first frame
        return [late]

    monkeypatch.setattr(manager, "_flow_companions", companions)
    manager.start()
    try:
        manager._queue.put("leader")
        deadline = time.monotonic() + 10
        while late.status != "failed" and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        manager.stop()
    assert calls == ["leader", "leader"]
    assert (leader.status, late.status) == ("failed", "failed")
    assert late.error is not None and "after a shot joined" in late.error["message"]
    assert (elsewhere.status, elsewhere.error) == ("running", None)
