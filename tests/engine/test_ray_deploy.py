"""The Ray engine's parts that need no cluster: how jobs are cut into units, cache writes
racing across processes, the KubeRay manifest and the serve-ray command line."""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine_testlib import depth_png, make_job

from engine.coherence.strategies import make_strategy
from engine.contract.schema import CoherenceSpec, FrameSpec, JobRequest
from engine.ray.config import RayEngineConfig
from engine.ray.jobs import RayJobManager, plan_units
from engine.storage import Storage

ROOT = Path(__file__).resolve().parents[2]


def frames(n: int) -> list[FrameSpec]:
    return [FrameSpec(frame=k, depth="a" * 64) for k in range(1, n + 1)]


def batches(n: int, batch_size: int, mode: str = "INDEPENDENT") -> list[list[FrameSpec]]:
    strategy = make_strategy(CoherenceSpec(mode=mode))
    return list(strategy.batches(frames(n), batch_size, lambda f: ("depth",)))


def test_units_are_whole_batches_split_evenly_over_replicas() -> None:
    # 20 frames in batches of 4 over 2 replicas: 12 + 8 (batches are never cut).
    assert plan_units(batches(20, 4), False, replicas=2, split_min_frames=8) == [
        list(range(1, 13)), list(range(13, 21))]
    # Over 4 replicas, but no unit under split_min_frames: 20 // 8 = 2 units.
    assert [len(u) for u in plan_units(batches(20, 1), False, 4, 8)] == [10, 10]
    assert [len(u) for u in plan_units(batches(40, 1), False, 4, 8)] == [10, 10, 10, 10]
    # Short shots, one replica, FLOW: one unit, in order.
    assert plan_units(batches(10, 2), False, 4, 8) == [list(range(1, 11))]
    assert plan_units(batches(40, 1), False, 1, 8) == [list(range(1, 41))]
    assert plan_units(batches(40, 4, "FLOW"), True, 4, 8) == [list(range(1, 41))]
    assert plan_units([], False, 2, 8) == []


def test_a_unit_goes_to_serve_only_when_a_replica_is_free(tmp_path: Path, tiny_models: dict[str, str]) -> None:
    """Four one-unit jobs on two replicas: never more than two units in Serve at once (Serve's
    router would hold the others and look again only after a backoff), and all four finish."""
    storage = Storage(tmp_path)
    lock = threading.Lock()
    in_flight, most, sent = [0], [0], []

    class Call:
        """A Serve call: the 'replica' makes the unit's frames in 0.1 s."""

        def __init__(self, unit_id: str, payload: dict[str, Any], model: str | None) -> None:
            self.unit_id = unit_id
            with lock:
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
                sent.append(unit_id)

        def result(self) -> dict[str, Any]:
            time.sleep(0.1)
            job = manager.jobs[self.unit_id.rsplit("-", 1)[0]]
            for key in job.frame_keys.values():
                storage.put_frame(key, depth_png(0.2))
            with lock:
                in_flight[0] -= 1
            return {"status": "done", "timings": {"model_s": 0.1}}

        def cancel(self) -> None:
            pass

    manager = RayJobManager(storage, call_unit=Call, worker_device="cpu", replicas=2)
    manager.start()
    try:
        depth = depth_png(0.1)
        sha = hashlib.sha256(depth).hexdigest()
        assert storage.put_blob(sha, depth)
        jobs = [manager.submit(JobRequest.model_validate(make_job(
            tiny_models, [{"frame": 1, "depth": sha}], shot=f"s{i}", seed=i))) for i in range(4)]
        deadline = time.monotonic() + 30
        while any(j.status not in ("done", "failed", "cancelled") for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        manager.stop()
    assert [j.status for j in jobs] == ["done"] * 4, [j.error for j in jobs]
    assert len(sent) == 4 and most[0] == 2


def _hammer(root: str, key: str, byte: int, rounds: int) -> None:
    storage = Storage(root)
    for _ in range(rounds):
        storage.put_frame(key, bytes([byte]) * 200_000)


def test_cache_writes_are_atomic_across_processes(tmp_path: Path) -> None:
    """Two processes write the same frame over and over; a reader only ever sees a whole file."""
    storage = Storage(tmp_path)
    key = "ab" + "0" * 62
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_hammer, args=(str(tmp_path), key, b, 150)) for b in (1, 2)]
    for w in writers:
        w.start()
    seen: set[tuple[int, int]] = set()
    # Read the file itself: has_frame would (rightly) delete these non-PNG test payloads as damaged.
    path = storage.frame_path(key)
    while any(w.is_alive() for w in writers):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        seen.add((len(data), len(set(data))))
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert seen and seen <= {(200_000, 1)}, seen
    assert not list(storage.frame_path(key).parent.glob(".tmp-*")), "no temporary file is left behind"


def test_rayservice_manifest_runs_this_engine() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/rayservice.yaml").read_text()))
    service = next(d for d in docs if d["kind"] == "RayService")
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert service["apiVersion"] == "ray.io/v1"
    # 1. The Serve config: our builder, with args the engine knows.
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    assert app["import_path"] == "engine.ray.serve:build_app" and app["route_prefix"] == "/"
    assert re.search(r"^def build_app\(", (ROOT / "engine/ray/serve.py").read_text(), re.M)
    fields = {f.name for f in dataclasses.fields(RayEngineConfig)}
    assert set(app["args"]) <= fields, set(app["args"]) - fields
    cfg = RayEngineConfig(**app["args"])
    assert cfg.autoscaling() is not None and cfg.planned_replicas() == cfg.max_replicas
    # Serve's own check of the autoscaling fields; units routed by model, one pipeline per GPU.
    from ray.serve.config import AutoscalingConfig

    scaling = AutoscalingConfig(**cfg.autoscaling())
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (1, 4, 1)
    assert cfg.model_routing and cfg.max_pipelines == 1
    # 2. The cluster: the pinned Ray version; one GPU per worker pod, as many pods as replicas.
    cluster = service["spec"]["rayClusterConfig"]
    pinned = re.search(r"ray\[serve\]==([\d.]+)", (ROOT / "engine/requirements-ray.txt").read_text())
    assert pinned and cluster["rayVersion"] == pinned.group(1)
    (group,) = cluster["workerGroupSpecs"]
    (worker,) = group["template"]["spec"]["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) == cfg.gpus_per_replica
    assert group["maxReplicas"] * int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= cfg.max_replicas
    # 3. Shared data: every pod mounts the ReadWriteMany claim where data_dir lives; the token is a secret.
    head = cluster["headGroupSpec"]["template"]["spec"]
    for spec, container in ((head, head["containers"][0]), (group["template"]["spec"], worker)):
        (mount,) = container["volumeMounts"]
        assert cfg.data_dir.startswith(mount["mountPath"] + "/")
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        token = next(e for e in container["env"] if e["name"] == "VIEWFINDER_ENGINE_TOKEN")
        assert "secretKeyRef" in token["valueFrom"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert serve_config["http_options"]["port"] == 8000


def test_serve_ray_refuses_an_open_host_without_token() -> None:
    result = subprocess.run([sys.executable, "-m", "engine", "serve-ray", "--host", "0.0.0.0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)})
    assert result.returncode == 2
    assert "--token" in result.stderr or "ray[serve]" in result.stderr or "Ray Serve" in result.stderr


@pytest.mark.parametrize("args", [["--replicas", "0"], ["--min-replicas", "3", "--max-replicas", "2"]])
def test_serve_ray_rejects_bad_replica_counts(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "engine", "serve-ray", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)})
    assert result.returncode == 2 and "replicas" in result.stderr, result.stderr
