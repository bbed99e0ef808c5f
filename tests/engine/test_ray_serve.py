"""The engine on Ray Serve (engine/ray/serve.py): a real Ray cluster of two nodes on this machine
(the head and a second ``ray start`` joined to it, one CPU each), one CPU replica on each, tiny
models, driven over HTTP by the add-on's own client.

One cluster for the module (it takes ~30 s to start), stopped with its nodes at the module's end
(other Ray clusters on the machine are left alone); the worker node is removed by the last test.
Skipped with the reason when ray[serve] is not installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from engine_testlib import OOM_FRAME, depth_png, fault_env, make_job, pose_png, read_png, wait_for
from test_coherence import depth_map as flow_depth_map
from test_coherence import flow_map, npy, png16

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ray_engine import RayEngine, ray_missing_reason  # noqa: E402

pytestmark = pytest.mark.engine
_MISSING = ray_missing_reason(sys.executable)
if _MISSING:
    pytest.skip(_MISSING, allow_module_level=True)


@pytest.fixture(scope="module")
def ray_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayEngine]:
    """serve-ray with two replicas, one on the head and one on a worker node; long INDEPENDENT
    shots split from 3 frames a unit on."""
    engine = RayEngine(sys.executable, tmp_path_factory.mktemp("ray-engine"), replicas=2, worker_nodes=1,
                       extra_args=("--split-min-frames", "3", "--job-quota", "12"),
                       env=fault_env())
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture()
def ray_client(ray_engine: RayEngine, core: types.SimpleNamespace) -> Any:
    return core.client.EngineClient(ray_engine.url, token=ray_engine.token, timeout=30)


def independent_shot(client: Any, n: int, first: int = 1, phase: float = 0.0) -> list[dict[str, Any]]:
    return [{"frame": first + i, "depth": client.upload_blob(depth_png(phase + i / 10)),
             "pose": client.upload_blob(pose_png(shift=i)) if i % 2 == 0 else None, "flow": None}
            for i in range(n)]


def flow_shot(client: Any, n: int) -> list[dict[str, Any]]:
    return [{"frame": k, "depth": client.upload_blob(png16(flow_depth_map(k))), "pose": None,
             "flow": client.upload_blob(npy(flow_map(k)))} for k in range(1, n + 1)]


def frames_of(client: Any, status: dict[str, Any], tmp_path: Path) -> dict[int, np.ndarray]:
    out = {}
    for n in status["frames"]:
        out[n] = read_png(client.fetch_frame(status["id"], n, str(tmp_path / f"{status['id']}-{n}.png")))
    return out


def test_same_contract_as_one_engine(ray_engine: RayEngine, ray_client: Any, core: types.SimpleNamespace,
                                     tiny_models: dict[str, str]) -> None:
    health = ray_client.health()
    assert health["status"] == "ok" and health["device"] == "cpu" and health["auth"] is True
    # The limits are published as on one engine (Generate All paces itself by them), the quota set by --job-quota.
    published = ray_client.limits()
    assert (published["job_quota"], published["max_side"], published["max_status_ids"]) == (12, 4096, 100)
    # No token or a wrong one: 401 with the same code as one engine.
    anonymous = core.client.EngineClient(ray_engine.url, token="wrong", timeout=10)
    with pytest.raises(core.client.EngineError) as info:
        anonymous.status("0" * 16)
    assert info.value.code == "unauthorized"
    # Bad input names the field; unknown jobs and missing blobs too.
    frames = [{"frame": 1, "depth": "ab" * 32, "pose": None, "flow": None}]
    with pytest.raises(core.client.EngineError) as info:
        ray_client.submit(make_job(tiny_models, frames))
    assert info.value.code == "missing_blob" and info.value.field == "frames[0].depth"
    with pytest.raises(core.client.EngineError) as info:
        ray_client.submit(make_job(tiny_models, independent_shot(ray_client, 1), width=60))
    assert info.value.code == "invalid_field" and info.value.field == "width"
    with pytest.raises(core.client.EngineError) as info:
        ray_client.status("f" * 16)
    assert info.value.code == "unknown_job"


def test_a_token_past_its_quota_is_refused_as_one_engine_refuses_it(ray_engine: RayEngine, ray_client: Any,
                                                                    engine: Any, client: Any, core: types.SimpleNamespace,
                                                                    tiny_models: dict[str, str]) -> None:
    """Issue 22: Generate All paces itself by /limits and waits out a 429 the same way on Ray Serve
    as on one engine. The token's 12 jobs (--job-quota 12) fill its quota; /limits says so; the
    13th is a 429 with Retry-After and the very JSON body one engine gives at its own quota (16)."""
    def fill(target: Any, quota: int) -> list[str]:
        depth = target.upload_blob(depth_png(0.66))
        slow = make_job(tiny_models, [{"frame": n, "depth": depth, "pose": None} for n in range(1, 41)],
                        shot="quota", steps=40, batch_size=1)
        ids = [target.submit({**slow, "seed": 900 + i}) for i in range(quota)]
        published = target.limits()
        assert (published["job_quota"], published["jobs_active"], published["retry_after_s"]) == (quota, quota, 1)
        return ids

    def refusal(url: str, token: str) -> tuple[int, str | None, str, dict[str, Any]]:
        body = make_job(tiny_models, [{"frame": 1, "depth": "ab" * 32, "pose": None}], seed=999)
        answer = requests.post(url + "/jobs", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        return answer.status_code, answer.headers.get("Retry-After"), answer.headers["content-type"], answer.json()

    filled = {"ray": (ray_client, fill(ray_client, 12)), "one": (client, fill(client, 16))}
    try:
        on_ray, on_one = refusal(ray_engine.url, ray_engine.token), refusal(engine.url, engine.token)
        assert on_ray[:3] == (429, "1", "application/json"), on_ray
        assert on_ray[3]["error"]["code"] == "queue_full" and on_ray[3]["error"]["field"] is None, on_ray
        assert "12 jobs queued or running (the limit is 12)" in on_ray[3]["error"]["message"], on_ray
        # One engine's refusal word for word, but for its own quota.
        on_one[3]["error"]["message"] = on_one[3]["error"]["message"].replace("16", "12")
        assert on_ray == on_one, (on_ray, on_one)
        # The add-on's client reads it as a wait, not a failure.
        with pytest.raises(core.client.EngineError) as info:
            ray_client.submit(make_job(tiny_models, [{"frame": 1, "depth": "ab" * 32, "pose": None}]))
        assert (info.value.status, info.value.code, info.value.retry_after) == (429, "queue_full", 1.0)
        assert info.value.quota_full
    finally:
        for target, ids in filled.values():
            for job_id in ids:
                target.cancel(job_id)
        for target, ids in filled.values():
            for job_id in ids:
                assert wait_for(target, job_id, timeout=120)["status"] in ("cancelled", "done"), job_id
    assert ray_client.limits()["jobs_active"] == 0  # room again: the next tests run at once


def test_two_shots_run_at_once_on_two_replicas(ray_client: Any, tiny_models: dict[str, str]) -> None:
    jobs = [make_job(tiny_models, independent_shot(ray_client, 2, phase=0.3 * s), shot=f"overlap{s}", seed=300 + s,
                     steps=6, batch_size=2) for s in range(2)]
    ids = [ray_client.submit(job) for job in jobs]
    statuses = [wait_for(ray_client, job_id, timeout=300) for job_id in ids]
    assert [s["status"] for s in statuses] == ["done", "done"], statuses
    units = [s["replicas"][0] for s in statuses]
    assert all(len(s["replicas"]) == 1 for s in statuses)
    assert units[0]["replica"] != units[1]["replica"], units
    # Overlap in time: each started before the other finished.
    assert units[0]["started"] < units[1]["finished"] and units[1]["started"] < units[0]["finished"], units
    assert all(s["started"] <= s["finished"] for s in statuses)


def test_frames_match_the_single_process_engine(ray_client: Any, client: Any, tiny_models: dict[str, str],
                                                tmp_path: Path) -> None:
    """INDEPENDENT (split over both replicas) and FLOW (one replica, in order): same pixels, same keys."""
    requests = {
        "independent": make_job(tiny_models, independent_shot(ray_client, 6), shot="same", seed=77, batch_size=2),
        "flow": {**make_job(tiny_models, flow_shot(ray_client, 4), shot="flow", steps=4, batch_size=4, seed=5),
                 "coherence": {"mode": "FLOW", "strength": 0.5, "keyframe_interval": 0}},
    }
    # The single engine has its own data folder: upload the same maps there.
    independent_shot(client, 6), flow_shot(client, 4)
    for name, job in requests.items():
        ray_status = wait_for(ray_client, ray_client.submit(job), timeout=300)
        one_status = wait_for(client, client.submit(job), timeout=300)
        assert ray_status["status"] == one_status["status"] == "done", (ray_status, one_status)
        assert ray_status["frames"] == one_status["frames"] and ray_status["frames_done"] == len(job["frames"])
        ray_frames, one_frames = frames_of(ray_client, ray_status, tmp_path), frames_of(client, one_status, tmp_path)
        for number, image in ray_frames.items():
            assert np.array_equal(image, one_frames[number]), f"{name} frame {number} differs"
        replicas = {u["replica"] for u in ray_status["replicas"]}
        if name == "independent":
            # 6 frames (each its own batch: the pose map comes and goes), split from 3 frames a unit:
            # two units, on two replicas.
            assert [u["frames"] for u in ray_status["replicas"]] == [[1, 2, 3], [4, 5, 6]]
            assert len(replicas) == 2
        else:
            assert [u["frames"] for u in ray_status["replicas"]] == [[1, 2, 3, 4]]
            assert len(ray_status["detail"].get("keyframes", [1])) >= 1
        # A repeat is answered from the shared cache, whichever replica made the frames.
        again = ray_client.submit_full(job)
        assert again["status"] == "done" and again["cached_frames"] == ray_status["frames"]


def test_cancel_stops_the_replica_and_keeps_finished_frames(ray_client: Any, tiny_models: dict[str, str]) -> None:
    job = make_job(tiny_models, independent_shot(ray_client, 8, phase=0.7), shot="cancel", seed=91, steps=12,
                   batch_size=1)
    job_id = ray_client.submit(job)
    wait_until(ray_client, job_id, lambda s: s["frames_done"] >= 1)
    ray_client.cancel(job_id)
    status = wait_for(ray_client, job_id, timeout=120)
    assert status["status"] == "cancelled", status
    assert 1 <= status["frames_done"] < 8
    assert all(u["status"] in ("cancelled", "done") for u in status["replicas"]), status["replicas"]
    # Both replicas are free again: a new job runs at once and finishes.
    follow = wait_for(ray_client, ray_client.submit(make_job(tiny_models, independent_shot(ray_client, 1, phase=0.9),
                                                             seed=92)), timeout=120)
    assert follow["status"] == "done"
    # Resubmitting the cancelled job only makes the missing frames.
    resumed = ray_client.submit_full(job)
    assert set(resumed["cached_frames"]) >= set(status["frames"])
    assert wait_for(ray_client, resumed["id"], timeout=300)["status"] == "done"


def test_killed_replica_mid_job_still_gives_a_complete_correct_take(ray_client: Any, client: Any,
                                                                    tiny_models: dict[str, str],
                                                                    tmp_path: Path) -> None:
    job = make_job(tiny_models, independent_shot(ray_client, 5, phase=0.5), shot="kill", seed=123, steps=8,
                   batch_size=1)
    job_id = ray_client.submit(job)
    before = wait_until(ray_client, job_id, lambda s: s["frames_done"] >= 2 and s["replicas"][0]["pid"])
    assert before["status"] == "running" and len(before["replicas"]) == 1  # 5 frames < 2 x 3: one unit
    os.kill(before["replicas"][0]["pid"], signal.SIGKILL)
    status = wait_for(ray_client, job_id, timeout=300)
    assert status["status"] == "done", status
    assert status["frames"] == [1, 2, 3, 4, 5] and status["frames_done"] == 5
    unit = status["replicas"][0]
    # Usually one retry; a second if Serve routed the first retry to the dying replica.
    assert unit["attempts"] >= 2 and unit["pid"] != before["replicas"][0]["pid"]
    assert len(status["events"]) == unit["attempts"] - 1, status["events"]
    assert all("was lost" in e and "sent to another replica" in e for e in status["events"]), status["events"]
    # No finished frame made twice: the second replica took every frame finished before the kill from the cache.
    assert set(before["frames"]) <= set(unit["from_cache"]), (before["frames"], unit)
    # And the take is correct: the very frames one engine makes.
    independent_shot(client, 5, phase=0.5)
    one = wait_for(client, client.submit(job), timeout=300)
    ray_frames, one_frames = frames_of(ray_client, status, tmp_path), frames_of(client, one, tmp_path)
    for number in range(1, 6):
        assert np.array_equal(ray_frames[number], one_frames[number]), f"frame {number} differs"


def test_killed_flow_unit_resumes_after_its_last_frame_with_the_same_frames(ray_client: Any, client: Any,
                                                                           tiny_models: dict[str, str],
                                                                           tmp_path: Path) -> None:
    """A FLOW shot is one unit, each frame made from the one before: killed mid-shot, the next
    replica starts from the last finished frame (read back from the cache), and the take is the
    one an uninterrupted run makes."""
    job = {**make_job(tiny_models, flow_shot(ray_client, 6), shot="flowkill", steps=8, batch_size=1, seed=17),
           "coherence": {"mode": "FLOW", "strength": 0.5, "keyframe_interval": 0}}
    job_id = ray_client.submit(job)
    before = wait_until(ray_client, job_id, lambda s: s["frames_done"] >= 2 and s["replicas"][0]["pid"])
    assert before["frames"] == list(range(1, before["frames_done"] + 1))  # in order
    os.kill(before["replicas"][0]["pid"], signal.SIGKILL)
    status = wait_for(ray_client, job_id, timeout=300)
    assert status["status"] == "done" and status["frames"] == [1, 2, 3, 4, 5, 6], status
    (unit,) = status["replicas"]
    assert unit["attempts"] >= 2 and unit["pid"] != before["replicas"][0]["pid"], unit
    # Resumed after the last frame finished before the kill: those came from the cache, not made again.
    assert set(before["frames"]) <= set(unit["from_cache"]), (before["frames"], unit)
    assert any("was lost" in e for e in status["events"]), status["events"]
    # An uninterrupted run (the single engine) makes the very same frames.
    flow_shot(client, 6)
    one = wait_for(client, client.submit(job), timeout=300)
    ray_frames, one_frames = frames_of(ray_client, status, tmp_path), frames_of(client, one, tmp_path)
    for number in range(1, 7):
        assert np.array_equal(ray_frames[number], one_frames[number]), f"frame {number} differs"


def test_units_go_to_the_replica_that_holds_their_model(ray_client: Any, tiny_models: dict[str, str],
                                                        tmp_path: Path) -> None:
    """Two checkpoints new to both replicas, alternating, one job at a time: each loads once (on
    the replica holding the fewest models: the same or another, after the earlier tests); after
    that every job goes where its model is (Serve's multiplexing, by the pipeline key). Without
    the routing a job lands on either replica (1 in 16 to pass; failed with --no-model-routing
    when this test was written)."""
    copies = []
    for name in ("route-b", "route-c"):
        shutil.copytree(tiny_models["base"], tmp_path / name)
        copies.append({**tiny_models, "base": str(tmp_path / name)})
    units = []
    for i in range(6):
        job = make_job(copies[i % 2], independent_shot(ray_client, 1, phase=0.1 * i), shot=f"route{i}", seed=60 + i,
                       steps=2)
        (unit,) = wait_for(ray_client, ray_client.submit(job), timeout=300)["replicas"]
        units.append(unit)
    assert [u["loaded"] for u in units] == [True, True, False, False, False, False], units
    replica_b, replica_c = units[0]["replica"], units[1]["replica"]
    assert [u["replica"] for u in units] == [replica_b, replica_c] * 3
    assert units[0]["model"] != units[1]["model"] and {u["model"] for u in units[2:]} == {u["model"] for u in units[:2]}


def test_out_of_memory_fails_that_job_only(ray_client: Any, tiny_models: dict[str, str]) -> None:
    oom = make_job(tiny_models, [{"frame": OOM_FRAME, "depth": ray_client.upload_blob(depth_png(0.1)), "pose": None}],
                   shot="oom", seed=5)
    other = make_job(tiny_models, independent_shot(ray_client, 2, phase=0.2), shot="fine", seed=6)
    ids = [ray_client.submit(oom), ray_client.submit(other)]
    failed, done = (wait_for(ray_client, job_id, timeout=300) for job_id in ids)
    assert failed["status"] == "failed" and failed["error"]["code"] == "out_of_memory", failed
    assert "batch size" in failed["error"]["message"]
    assert done["status"] == "done" and done["frames_done"] == 2
    assert ray_client.health()["status"] == "ok"


def test_generate_all_places_takes_in_the_order_jobs_finish(ray_client: Any, core: types.SimpleNamespace,
                                                            tiny_models: dict[str, str], tmp_path: Path) -> None:
    """core/generate/all_shots.py: every shot submitted at once; a short shot listed last comes back first."""
    import importlib

    generate = importlib.import_module("vf_core_under_test.generate.shot")
    generate_all = importlib.import_module("vf_core_under_test.generate.all_shots")
    request = importlib.import_module("vf_core_under_test.jobs.request")

    def shot_job(name: str, frames: int, steps: int) -> Any:
        folder = tmp_path / name / "conditioning"
        (folder / "depth").mkdir(parents=True)
        maps = {}
        for k in range(1, frames + 1):
            path = folder / "depth" / f"{k:04d}.png"
            path.write_bytes(depth_png(0.05 * k + (0.5 if name == "Short" else 0.0)))
            maps[k] = {"depth": path, "pose": None, "flow": None}
        body = make_job(tiny_models, [], shot=name, seed=808, steps=steps, batch_size=1)
        body.pop("frames")
        prompts = {"prompt": body["prompt"], "style_prompt": body["style_prompt"],
                   "negative_prompt": body["negative_prompt"]}
        typed = request.JobRequest.from_parts(name, body["models"], {}, {k: v for k, v in body.items()
                                                                     if k not in ("shot", "models")})
        return generate.ShotJob(shot=name, frames=list(maps), conditioning_dir=folder, takes_dir=tmp_path / name / "takes",
                                maps=maps, request=typed, models=dict(body["models"]), prompts=prompts,
                                settings={"seed": 808, "steps": steps})

    # Long is ~70x the work of Short, so a replica that must first load its pipeline for Short still
    # returns Short first on a loaded machine.
    jobs = [shot_job("Long", 6, 24), shot_job("Short", 1, 2)]
    recording = PollRecorder(ray_client)
    outcomes = list(generate_all.run_shots(jobs, recording))
    assert [o.shot for o in outcomes] == ["Short", "Long"], outcomes
    # While both jobs were in flight they were polled together, one request a round: a job was
    # asked for alone only before the other was submitted or after it had ended.
    assert any(len(ids) == 2 for kind, ids in recording.calls if kind == "statuses"), recording.calls
    both = [i for i, (kind, ids) in enumerate(recording.calls) if kind == "statuses" and len(ids) == 2]
    alone = [i for i, (kind, _) in enumerate(recording.calls) if kind == "status"]
    assert not [i for i in alone if both[0] < i < both[-1]], recording.calls
    for outcome, frames in zip(outcomes, (1, 6)):
        assert outcome.complete and not outcome.error, outcome
        assert sorted(p.name for p in outcome.take_dir.glob("*.png")) == [f"{k:04d}.png" for k in range(1, frames + 1)]


def test_a_job_resumes_with_the_same_frames_after_the_ingress_restarts(ray_engine: RayEngine, ray_client: Any,
                                                                       client: Any, tiny_models: dict[str, str],
                                                                       tmp_path: Path) -> None:
    """The ingress killed (SIGKILL) mid-job. Serve starts another, which takes the job back from its
    journal and resumes it after the frames in the cache; the take is the one the single engine
    makes."""
    job = make_job(tiny_models, independent_shot(ray_client, 5, phase=0.35), shot="restart", seed=131, steps=8,
                   batch_size=1)
    job_id = ray_client.submit(job)
    before = wait_until(ray_client, job_id, lambda s: s["frames_done"] >= 1)
    ingress = list(ray_engine.replica_pids("Ingress"))
    assert len(ingress) == 1
    os.kill(ingress[0], signal.SIGKILL)
    status = ended_through_restart(ray_client, job_id)
    assert status["status"] == "done" and status["frames"] == [1, 2, 3, 4, 5], status
    assert any("ingress restarted" in e for e in status["events"]), status["events"]
    assert set(before["frames"]) <= set(status["cached_frames"]), (before["frames"], status["cached_frames"])
    independent_shot(client, 5, phase=0.35)
    one = wait_for(client, client.submit(job), timeout=300)
    ray_frames, one_frames = frames_of(ray_client, status, tmp_path), frames_of(client, one, tmp_path)
    for number in range(1, 6):
        assert np.array_equal(ray_frames[number], one_frames[number]), f"frame {number} differs"


def test_a_worker_node_removed_mid_job_loses_no_frame(ray_engine: RayEngine, ray_client: Any, client: Any,
                                                      tiny_models: dict[str, str], tmp_path: Path) -> None:
    """Last in this module: the worker node pulled out (its raylet and its replica killed at once)
    while a shot split over both nodes is half made there. The lost unit goes to the head's
    replica, which takes the finished frames from the shared cache; the job ends done with every
    frame, each the very frame the single engine makes."""
    (node,) = ray_engine.nodes
    replicas = ray_engine.replica_pids()
    # The replicas spread across both nodes: one on the head, one on the worker node.
    assert sorted(replicas.values()) == sorted([ray_engine.process.pid, node.pid]), replicas
    on_node = next(pid for pid, session in replicas.items() if session == node.pid)
    # 12 frames, one a batch: two units of 6, one per replica.
    job = make_job(tiny_models, independent_shot(ray_client, 12, phase=0.45), shot="node", seed=141, steps=8,
                   batch_size=1)
    job_id = ray_client.submit(job)

    def half_made_on_node(status: dict[str, Any]) -> bool:
        unit = next((u for u in status["replicas"] if u["pid"] == on_node), None)
        return unit is not None and bool(set(unit["frames"]) & set(status["frames"]))

    before = wait_until(ray_client, job_id, half_made_on_node)
    unit_before = next(u for u in before["replicas"] if u["pid"] == on_node)
    made_on_node = sorted(set(unit_before["frames"]) & set(before["frames"]))
    ray_engine.remove_node(node)
    status = ended_through_restart(ray_client, job_id, timeout=300)
    assert status["status"] == "done" and status["frames"] == list(range(1, 13)), status
    (unit,) = [u for u in status["replicas"] if u["id"] == unit_before["id"]]
    assert unit["status"] == "done" and unit["attempts"] >= 2 and unit["pid"] != on_node, unit
    assert any("was lost" in e for e in status["events"]), status["events"]
    # No frame lost or made twice: those made on the removed node came from the cache.
    assert set(made_on_node) <= set(unit["from_cache"]), (made_on_node, unit)
    # Every frame fetched and decoded, and each one the single engine's.
    independent_shot(client, 12, phase=0.45)
    one = wait_for(client, client.submit(job), timeout=300)
    ray_frames, one_frames = frames_of(ray_client, status, tmp_path), frames_of(client, one, tmp_path)
    assert sorted(ray_frames) == list(range(1, 13))
    for number in range(1, 13):
        assert np.array_equal(ray_frames[number], one_frames[number]), f"frame {number} differs"


def ended_through_restart(client: Any, job_id: str, timeout: float = 240.0) -> dict[str, Any]:
    """The job's last status; while the ingress restarts, requests fail (connection refused, 503) and
    are asked again: a job must never hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = client.status(job_id)
        except Exception:  # noqa: BLE001 - the ingress is restarting
            status = {"status": "restarting"}
        if status["status"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} had not ended {timeout} s after the ingress was killed")


class PollRecorder:
    """An EngineClient that records which status calls the add-on's loop makes."""

    def __init__(self, client: Any) -> None:
        self.client, self.calls = client, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def status(self, job_id: str) -> dict[str, Any]:
        self.calls.append(("status", [job_id]))
        return self.client.status(job_id)

    def statuses(self, job_ids: list[str]) -> dict[str, dict[str, Any]] | None:
        self.calls.append(("statuses", list(job_ids)))
        return self.client.statuses(job_ids)


def wait_until(client: Any, job_id: str, test: Any, timeout: float = 240.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.status(job_id)
        if test(status):
            return status
        assert status["status"] in ("queued", "running"), status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id}: condition not met in {timeout} s: {client.status(job_id)}")
