"""A job as the engine keeps it: its request, resolved models, cache keys, progress and timings.

Created at submit on the HTTP thread; the worker thread and the runners update it; HTTP
handlers only read it (``to_json``) and set its cancel event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..characters.ip_adapter import IpAdapterRef
    from ..contract.errors import EngineFault
    from ..contract.schema import JobRequest
    from ..models.pipelines import PipelineKey
    from ..models.refs import ModelRef
    from ..models.video import VideoKey


@dataclass
class Job:
    """Any kind of job (engine/jobs/runners.py). ``key`` names the loaded pipeline it runs on: a
    ``PipelineKey`` for image jobs, a ``VideoKey`` for VIDEO jobs; ``refs`` its models by role.
    The LoRA and the identity fields below are the image runners' and stay empty otherwise."""

    id: str
    request: JobRequest
    refs: dict[str, ModelRef | None]
    key: PipelineKey | VideoKey
    frame_keys: dict[int, str]
    lora: ModelRef | None = None
    status: str = "queued"
    phase: str = "queued"
    detail: dict[str, Any] = field(default_factory=dict)
    done: dict[int, str] = field(default_factory=dict)
    cached: list[int] = field(default_factory=list)
    step: int = 0
    error: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    eta_s: float | None = None
    timings: dict[str, float] = field(default_factory=lambda: {"load_s": 0.0, "model_s": 0.0, "run_s": 0.0})
    pipeline_reused: bool | None = None
    warnings: list[str] = field(default_factory=list)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    # Adjustments the engine made to the request (VIDEO: padding, rounding), for the user.
    messages: list[str] = field(default_factory=list)
    # Issue 9: character LoRAs by name, the IP-Adapter, and what identity conditioning did.
    char_loras: dict[str, ModelRef | None] = field(default_factory=dict)
    ip_ref: IpAdapterRef | None = None
    identity: dict[str, Any] | None = None
    step_s: float | None = None  # seconds the last denoising step took
    owner: str = "default"  # the token's name: the fair queue's round robin, the job table's eviction
    _step_at: float = 0.0

    def on_step(self, step: int) -> bool:
        """Worker thread, after every denoising step: records progress; True asks to cancel."""
        now = time.perf_counter()
        if step > 1 and self._step_at:
            self.step_s = now - self._step_at
        self._step_at = now
        self.step = step
        return self.cancel_event.is_set()

    def update_eta(self, run_started: float, generated: int, handed: Iterable[int] = ()) -> None:
        """Seconds left at this run's pace: ``generated`` frames made since ``run_started``; frames in
        ``handed`` are given to the writer and count as done. The one ETA formula of every runner."""
        if generated <= 0:
            return
        remaining = len(self.frame_keys) - len(self.done.keys() | set(handed))
        self.eta_s = (time.perf_counter() - run_started) / generated * remaining

    def finish(self, status: str, error: EngineFault | None = None) -> None:
        """The job ends with ``status`` ('done', 'cancelled', 'failed'), and ``error`` when it failed."""
        self.error = error.to_json() if error else None
        self.finished = time.time()
        self.eta_s = 0.0 if status == "done" else None
        self.phase = status
        self.status = status

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "shot": self.request.shot, "status": self.status, "phase": self.phase,
            "detail": dict(self.detail), "frames_total": len(self.frame_keys),
            "frames_done": len(self.done), "frames": sorted(self.done), "cached_frames": sorted(self.cached),
            "step": self.step, "steps": self.request.steps, "eta_s": self.eta_s, "error": self.error,
            "timings": dict(self.timings), "pipeline_reused": self.pipeline_reused,
            "generator": self.request.generator, "messages": list(self.messages),
            "warnings": list(self.warnings),
            **({"identity": dict(self.identity)} if self.identity is not None else {}),
            "step_s": None if self.step_s is None else round(self.step_s, 4),
        }
