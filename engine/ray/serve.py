"""The engine on Ray Serve: one ingress with the HTTP contract of ``python -m engine serve``
(engine/API.md), and worker replicas, each with its own GPU(s) and loaded pipelines.

    ingress (1 replica, no GPU)              workers (N replicas, G GPUs each)
    create_app(RayJobManager)  --units-->    Worker.run_unit -> JobManager (one per replica)
             \\__________ shared --data-dir: blobs, frame cache, unit status ________/

Started by ``python -m engine serve-ray`` (engine/api/cli.py), or by a KubeRay RayService
through ``build_app`` (deploy/rayservice.yaml). Imports ray: only the serve-ray command and
Ray's workers load this module.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from ..api.auth import Tokens
from ..api.server import create_app
from ..contract.errors import EngineFault
from ..contract.schema import JobRequest
from ..jobs.manager import JobManager
from ..storage import Storage
from .config import RayEngineConfig
from .jobs import RayJobManager, write_unit_status
from .routing import ServePipelines, model_id
from .standin import StandInExecutor

logger = logging.getLogger(__name__)

APP_NAME = "viewfinder"
UNIT_STATUS_S = 0.2  # how often a running unit's status file is rewritten


# max_ongoing_requests=1: a replica runs one unit at a time (one GPU, one model run); others
# wait in Serve's queue and go to the first free replica.
@serve.deployment(max_ongoing_requests=1, health_check_period_s=5, health_check_timeout_s=60)
class Worker:
    """A GPU replica: a JobManager with its loaded pipelines, running one unit at a time."""

    def __init__(self, config: dict[str, Any]) -> None:
        cfg = RayEngineConfig(**config)
        simulated = cfg.simulate_frame_s > 0
        device = "cpu" if simulated or cfg.device == "auto" and cfg.gpus_per_replica <= 0 else cfg.device
        if cfg.gpus_per_replica <= 0 and not simulated:
            import torch

            # One torch thread per reserved CPU: replicas on one machine do not fight for cores.
            torch.set_num_threads(max(1, int(cfg.cpus_per_replica)))
        self.storage = Storage(cfg.data_dir)
        # Pipelines load through Serve's model multiplexer (kept here as an attribute, where Serve
        # looks for it): it reports which models this replica holds, for routing.
        self.pipelines = ServePipelines(cfg.max_pipelines)
        self.load_pipeline = self.pipelines.multiplexed
        executor = StandInExecutor(cfg.simulate_frame_s, cfg.simulate_load_s) if simulated else None
        self.manager = JobManager(self.storage, default_device=device, max_pipelines=cfg.max_pipelines,
                                  executor=executor, pipelines=self.pipelines)
        # A job's end wakes the call waiting on it, so the replica returns its unit at once
        # without looking every few milliseconds.
        self.ended: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        self.manager.on_end.append(self._wake)
        self.manager.start()
        self.replica = serve.get_replica_context().replica_id.unique_id
        logger.info("Worker replica %s (pid %d) on %s%s", self.replica, os.getpid(), self.manager.default_device,
                    f", stand-in model ({cfg.simulate_frame_s} s a frame)" if simulated else "")

    def info(self) -> dict[str, Any]:
        return {"device": self.manager.default_device, "pid": os.getpid(), "replica": self.replica}

    def _wake(self, job: Any) -> None:
        """Any thread: the job ended; wake its run_unit call on the replica's event loop."""
        waiter = self.ended.get(job.id)
        if waiter is not None:
            waiter[0].call_soon_threadsafe(waiter[1].set)

    async def run_unit(self, unit_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Generate the unit's frames into the shared cache; returns the local job's status, with
        where it ran and whether this replica had to load the pipeline (``loaded``)."""
        # 1. Same checks as one engine; frames already in the shared cache are skipped.
        self.pipelines.loop = asyncio.get_running_loop()
        try:
            job = self.manager.submit(JobRequest.model_validate(payload))
        except EngineFault as exc:
            return {"status": "failed", "error": exc.to_json(), "http_status": exc.status,
                    "replica": self.replica, "pid": os.getpid()}
        started = time.time()
        ended = asyncio.Event()
        self.ended[job.id] = (asyncio.get_running_loop(), ended)
        model = model_id(job.key)
        routed = serve.get_multiplexed_model_id()
        if routed and routed != model:
            logger.warning("Unit %s was routed as model %s but its pipeline is %s", unit_id, routed, model)

        def record() -> None:
            write_unit_status(self.storage, unit_id, {
                "replica": self.replica, "pid": os.getpid(), "started": started, "status": job.status,
                "phase": job.phase, "step": job.step, "frames_done": len(job.done), "model": model,
                "timings": job.timings, "pipeline_reused": job.pipeline_reused})

        # 2. Wait on the local worker thread, publishing progress for the ingress every
        #    UNIT_STATUS_S; the job's end wakes this at once, so the replica takes its next unit
        #    without delay.
        try:
            while job.status not in ("done", "failed", "cancelled"):
                record()
                try:
                    await asyncio.wait_for(ended.wait(), UNIT_STATUS_S)
                except asyncio.TimeoutError:
                    pass
        except asyncio.CancelledError:
            # Cancelled by the ingress (the user's cancel): stop at the next step and free the replica.
            self.manager.cancel(job.id)
            while job.status not in ("done", "failed", "cancelled"):
                await asyncio.sleep(0.05)
            raise
        finally:
            self.ended.pop(job.id, None)
        record()
        return {**job.to_json(), "replica": self.replica, "pid": os.getpid(), "model": model,
                "loaded": job.pipeline_reused is False}


# On the head node, with Ray's own state and Serve's controller: a worker node removed (a GPU pod
# scaled down, a machine lost) never takes the job table with it. Should the ingress restart
# anyway, it resumes its jobs from the journal (engine/ray/journal.py).
HEAD_NODE = {"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options=HEAD_NODE)
@serve.ingress()
class Ingress:
    """The HTTP contract (engine/api/server.py's app) around a RayJobManager; holds the job table."""

    async def __init__(self, workers: DeploymentHandle, config: dict[str, Any]) -> None:
        cfg = RayEngineConfig(**config)
        # A RayService passes the token through the environment (a Kubernetes secret), not its args.
        self.tokens: Tokens | str | None = Tokens.from_file(cfg.token_file) if cfg.token_file else (
            cfg.token or os.environ.get("VIEWFINDER_ENGINE_TOKEN") or None)
        info = await workers.info.remote()

        def call_unit(unit_id: str, payload: dict[str, Any], model: str | None) -> Any:
            """A unit to Serve; with ``model``, Serve prefers a replica that holds that pipeline."""
            handle = workers.options(multiplexed_model_id=model) if model else workers
            return handle.run_unit.remote(unit_id, payload)

        self.manager = RayJobManager(
            Storage(cfg.data_dir), call_unit=call_unit, worker_device=info["device"],
            replicas=cfg.planned_replicas(), split_min_frames=cfg.split_min_frames, model_routing=cfg.model_routing,
        )
        # Jobs a previous ingress took (before Serve restarted it) resume from the shared cache.
        resumed = self.manager.restore()
        self.job_quota = cfg.job_quota
        logger.info("Ingress: workers on %s, data in %s, %d job(s) resumed", info["device"], cfg.data_dir, resumed)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.manager, self.tokens, max_jobs_per_token=self.job_quota)


def build_app(args: dict[str, Any]) -> Any:
    """The Serve application (also the ``import_path`` target of a RayService: engine.ray.serve:build_app)."""
    cfg = RayEngineConfig(**args)
    cfg.data_dir = str(Path(cfg.data_dir).expanduser().resolve())
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
        # Serve's router, in the ingress, looks for a free replica every route_retry_s (config.py).
        "request_router_config": RequestRouterConfig(initial_backoff_s=cfg.route_retry_s, backoff_multiplier=1.0,
                                                     max_backoff_s=cfg.route_retry_s),
    }
    autoscaling = cfg.autoscaling()
    if autoscaling:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = cfg.replicas
    workers = Worker.options(**options).bind(asdict(cfg))
    return Ingress.bind(workers, asdict(cfg))


def serve_forever(cfg: RayEngineConfig, host: str, port: int, address: str | None = None,
                  num_cpus: int | None = None) -> int:
    """Start (or join, with ``address``) a Ray cluster, deploy the engine, serve until SIGTERM/SIGINT."""
    import signal
    import threading

    import ray

    # 1. The cluster: a local one (this process's children) unless an address is given. The
    #    engine package travels to the workers, so a remote cluster needs no copy of it.
    engine_dir = str(Path(__file__).resolve().parents[1])  # engine/ray/serve.py -> engine/
    env = {k: v for k, v in os.environ.items() if k.startswith(("VIEWFINDER_", "HF_", "OMP_", "CUDA_"))}
    runtime_env = {"py_modules": [engine_dir], "env_vars": env}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        # Ray runs its workers at nice 15 below its own agents; here the replicas are the work.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # "local": a new cluster even where `ray start` left an address in /tmp/ray/ray_current_cluster
        # (ray.init() would join that one, or fail if it is gone).
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 object_store_memory=100 * 1024 * 1024, runtime_env=runtime_env, log_to_driver=False)
    # Other machines join this cluster with `ray start --address <this>` (docs/shared-engine.md).
    print(f"Ray cluster at {ray.get_runtime_context().gcs_address}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        # 2. The HTTP proxy on host:port, and the application at "/".
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(asdict(cfg)), name=APP_NAME, route_prefix="/", blocking=False)
        logger.info("Viewfinder engine on Ray Serve at http://%s:%d: %s replica(s), %s GPU(s) each, data %s",
                    host, port, cfg.replicas if cfg.max_replicas <= 0 else f"{cfg.min_replicas}-{cfg.max_replicas}",
                    cfg.gpus_per_replica, cfg.data_dir)
        print(f"Viewfinder engine (Ray Serve) ready on http://{host}:{port}", flush=True)
        stop.wait()
    finally:
        # 3. Down again: the application (a local cluster goes with ray.shutdown).
        # A local cluster goes down whole with ray.shutdown (its replicas keep nothing worth a
        # graceful stop: finished frames are on disk); on a shared cluster only our application.
        logger.info("Stopping the Ray Serve engine")
        try:
            if address:
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()
    return 0
