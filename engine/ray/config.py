"""Settings of the engine on Ray Serve, without importing ray (the CLI, the tests and
deploy/rayservice.yaml's ``args`` all name these fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class RayEngineConfig:
    """Everything the Serve application needs; also the ``args`` of a RayService's serveConfigV2."""

    data_dir: str
    token: str | None = None
    # A 'name:token' per line: a token per artist, each with its own quota and fair share.
    token_file: str | None = None
    replicas: int = 1
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    device: str = "auto"
    # Loaded pipelines kept per replica (Serve's model multiplexer; least recently used unloaded).
    max_pipelines: int = 1
    # Each unit carries its pipeline key as Serve's multiplexed model id, so Serve sends it to a
    # replica that already holds the model (engine/ray/routing.py). False: any free replica.
    model_routing: bool = True
    # How often Serve's router looks again for a free replica. It probes two replicas at random:
    # with one free replica among N (a unit is sent when one frees) that takes ~N/2 looks, and
    # Serve's default pause, doubling to 0.5 s, left a replica idle for seconds at 16 replicas.
    route_retry_s: float = 0.01
    split_min_frames: int = 8
    job_quota: int = 16  # queued + running jobs per token (GET /limits, 429 past it)
    # Autoscaling: used when max_replicas > 0 (min..max replicas, by ongoing units per replica).
    min_replicas: int = 0
    max_replicas: int = 0
    target_ongoing_requests: float = 1.0
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 300.0
    look_back_period_s: float = 30.0  # the window Serve averages ongoing units over
    metrics_interval_s: float = 10.0  # how often replicas and the ingress report them
    # The stand-in model (engine/ray/standin.py): seconds a frame takes, by sleeping; 0 = real models.
    simulate_frame_s: float = 0.0
    simulate_load_s: float = 0.0  # seconds a stand-in pipeline takes to load

    def autoscaling(self) -> dict[str, Any] | None:
        if self.max_replicas <= 0:
            return None
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": max(self.min_replicas, min(self.replicas, self.max_replicas)),
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s,
                "look_back_period_s": self.look_back_period_s, "metrics_interval_s": self.metrics_interval_s}

    def planned_replicas(self) -> int:
        """How many replicas a long INDEPENDENT shot is split across."""
        return self.max_replicas if self.max_replicas > 0 else self.replicas
