"""The pool's parts that need no cluster (issue 26): fair slots, model ids, the job journal, the
stand-in model. The same parts on a real two-node cluster: test_ray_pool.py."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from engine_testlib import depth_png, make_job

from engine.contract.schema import JobRequest
from engine.jobs.manager import JobManager
from engine.ray.fair import FairSlots
from engine.ray.jobs import RayJobManager
from engine.ray.routing import model_id
from engine.ray.standin import StandInExecutor, standin_pixels
from engine.storage import Storage


def wait(test: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, "not reached"
        time.sleep(0.01)


def test_free_slots_go_round_robin_across_tokens_fifo_within_one() -> None:
    """One slot held; ana queues 3 units, then ben 2, then cai 1: served ana ben cai ana ben ana."""
    slots = FairSlots(1)
    assert slots.acquire("held")
    threads = []
    for owner, count in (("ana", 3), ("ben", 2), ("cai", 1)):
        for _ in range(count):
            queued = sum(slots.waiting().values())
            thread = threading.Thread(target=lambda o=owner: slots.acquire(o) and slots.release())
            thread.start()
            threads.append(thread)
            wait(lambda q=queued: sum(slots.waiting().values()) == q + 1)  # in this order
    slots.release()
    for thread in threads:
        thread.join(timeout=10)
    assert list(slots.order) == ["held", "ana", "ben", "cai", "ana", "ben", "ana"]
    assert slots.waiting() == {}


def test_a_token_arriving_goes_before_those_just_served() -> None:
    """ana holds the only slot and queues two more units; ben's one unit, queued after them,
    goes next: a single shot waits for one free replica, not for a round of the others."""
    slots = FairSlots(1)
    assert slots.acquire("ana")
    threads = []
    for owner in ("ana", "ana", "ben"):
        queued = sum(slots.waiting().values())
        threads.append(threading.Thread(target=lambda o=owner: slots.acquire(o) and slots.release()))
        threads[-1].start()
        wait(lambda q=queued: sum(slots.waiting().values()) == q + 1)
    slots.release()
    for thread in threads:
        thread.join(timeout=10)
    assert list(slots.order) == ["ana", "ben", "ana", "ana"]


def test_a_cancelled_unit_leaves_the_queue_and_keeps_no_slot() -> None:
    slots = FairSlots(1)
    assert slots.acquire("ana")
    cancel = threading.Event()
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(slots.acquire("ben", cancel.is_set, poll_s=0.01)))
    thread.start()
    wait(lambda: slots.waiting() == {"ben": 1})
    cancel.set()
    thread.join(timeout=10)
    assert result == [False] and slots.waiting() == {}
    slots.release()
    assert slots.acquire("cai")  # the slot came back


def request(tiny_models: dict[str, str], storage: Storage, shot: str, frames: int = 2, **extra: Any) -> JobRequest:
    maps = []
    for k in range(1, frames + 1):
        data = depth_png(0.1 * k)
        sha = hashlib.sha256(data).hexdigest()
        storage.put_blob(sha, data)
        maps.append({"frame": k, "depth": sha})
    return JobRequest.model_validate({**make_job(tiny_models, maps, shot=shot), **extra})


def test_the_ingress_and_a_replica_name_a_pipeline_alike(tmp_path: Path, tiny_models: dict[str, str]) -> None:
    """Serve routes by the id the ingress computes and a replica holds the id it computes: equal,
    one per pipeline (base model, LoRA, ...), not per job."""
    storage = Storage(tmp_path)
    ingress = RayJobManager(storage, call_unit=lambda *a: None, worker_device="cpu", replicas=2)
    replica = JobManager(storage, default_device="cpu")
    one, other_seed = request(tiny_models, storage, "a"), request(tiny_models, storage, "b", seed=9)
    lora = request(tiny_models, storage, "c", models={**make_job(tiny_models, [])["models"], "lora": tiny_models["lora"]})
    ids = [model_id(ingress.submit(r).key) for r in (one, other_seed, lora)]
    assert ids[0] == ids[1] == model_id(replica.submit(one).key) and ids[2] != ids[0]
    assert ids[0].startswith("pipelinekey-") and len(ids[0]) == len("pipelinekey-") + 16


def test_a_new_ingress_resumes_its_jobs_from_the_journal(tmp_path: Path, tiny_models: dict[str, str]) -> None:
    """Ingress 1 takes three jobs and dies before running them: one all cached (done), one to run,
    one whose model is gone by the restart. Ingress 2 resumes the second, fails the third with the
    reason, and returns the first as it was; owners are kept."""
    storage = Storage(tmp_path)
    for key in JobManager(storage, default_device="cpu").submit(request(tiny_models, storage, "cached")).frame_keys.values():
        storage.put_frame(key, depth_png(0.5))  # an earlier run made them all
    first = RayJobManager(storage, call_unit=lambda *a: None, worker_device="cpu", replicas=1)  # never started
    cached = first.submit(request(tiny_models, storage, "cached"), owner="ana")
    waiting = first.submit(request(tiny_models, storage, "waiting", frames=3, seed=3), owner="ben")
    gone = tmp_path / "gone-model"
    shutil.copytree(tiny_models["base"], gone)
    doomed = first.submit(request(tiny_models, storage, "doomed", models={
        **make_job(tiny_models, [])["models"], "base": str(gone)}), owner="cai")
    shutil.rmtree(gone)
    storage.put_frame(waiting.frame_keys[1], depth_png(0.7))  # made before the restart
    managers: list[RayJobManager] = []

    def call(unit_id: str, payload: dict[str, Any], model: str | None) -> CachedCall:
        return CachedCall(storage, managers[0], unit_id)

    managers.append(RayJobManager(storage, call_unit=call, worker_device="cpu", replicas=1))
    second = managers[0]
    assert cached.status == "done" and second.restore() == 1
    second.start()
    try:
        wait(lambda: second.jobs[waiting.id].status == "done")
    finally:
        second.stop()
    resumed, failed, kept = (second.jobs[j.id] for j in (waiting, doomed, cached))
    assert (resumed.owner, failed.owner, kept.owner) == ("ben", "cai", "ana")
    assert resumed.cached == [1] and sorted(resumed.done) == [1, 2, 3]
    assert any("ingress restarted" in e for e in resumed.events)
    assert failed.status == "failed" and failed.error and failed.error["code"] == "model_unavailable"
    assert "restarted and could not resume" in failed.error["message"]
    assert kept.status == "done" and sorted(kept.done) == [1, 2]


class CachedCall:
    """A Serve call whose 'replica' writes the unit's frames at once."""

    def __init__(self, storage: Storage, manager: RayJobManager, unit_id: str) -> None:
        self.storage, self.manager, self.unit_id = storage, manager, unit_id

    def result(self) -> dict[str, Any]:
        job = self.manager.jobs[self.unit_id.rsplit("-", 1)[0]]
        for key in job.frame_keys.values():
            self.storage.put_frame(key, depth_png(0.3))
        return {"status": "done", "timings": {}}

    def cancel(self) -> None:
        pass


def test_the_stand_in_sleeps_per_frame_loads_once_and_writes_flat_frames(tmp_path: Path,
                                                                         tiny_models: dict[str, str]) -> None:
    storage = Storage(tmp_path)
    manager = JobManager(storage, default_device="cpu", executor=StandInExecutor(frame_s=0.01, load_s=0.01))
    manager.start()
    try:
        jobs = [manager.submit(request(tiny_models, storage, f"s{i}", frames=3, seed=i)) for i in range(2)]
        wait(lambda: all(j.status == "done" for j in jobs))
    finally:
        manager.stop()
    assert [j.pipeline_reused for j in jobs] == [False, True]
    assert [j.timings["model_s"] for j in jobs] == pytest.approx([0.03, 0.03])
    for job in jobs:
        for key in job.frame_keys.values():
            assert storage.read_frame(key) is not None
            assert (standin_pixels(key, 64, 64) == standin_pixels(key, 64, 64)[0, 0]).all()
    colours = {tuple(standin_pixels(k, 2, 2)[0, 0]) for j in jobs for k in j.frame_keys.values()}
    assert len(colours) == 6  # a colour per frame key
