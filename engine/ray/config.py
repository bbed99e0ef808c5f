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
    replicas: int = 1
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    device: str = "auto"
    max_pipelines: int = 1
    split_min_frames: int = 8
    job_quota: int = 16  # queued + running jobs per token (GET /limits, 429 past it)
    # Autoscaling: used when max_replicas > 0 (min..max replicas, by ongoing units per replica).
    min_replicas: int = 0
    max_replicas: int = 0
    target_ongoing_requests: float = 1.0
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 300.0

    def autoscaling(self) -> dict[str, Any] | None:
        if self.max_replicas <= 0:
            return None
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": max(self.min_replicas, min(self.replicas, self.max_replicas)),
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s}

    def planned_replicas(self) -> int:
        """How many replicas a long INDEPENDENT shot is split across."""
        return self.max_replicas if self.max_replicas > 0 else self.replicas
