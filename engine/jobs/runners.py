"""One runner per job kind, picked by the request (``JobRequest.job_kind``), not by if-chains.

A runner makes the frames of a group of jobs (the first one and, for FLOW, the queued jobs
interleaved with it) through the ``RunContext`` it is given; it never sees the manager.
How a job is checked and keyed at submit is the kind's too: VIDEO has its own windows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..contract.schema import JobRequest
from ..models.pipelines import SpeedOptions
from ..storage import Storage
from .batch import BatchRunner
from .context import RunContext
from .finalize import FinalizeRunner
from .flow import FlowRunner
from .job import Job
from .submit import submit_image
from .video import VideoRunner, submit_video


class Runner(Protocol):
    def run(self, context: RunContext, group: list[Job]) -> None:
        """Worker thread: make the group's missing frames and complete each job (``context.complete``)."""


RUNNERS: dict[str, Runner] = {
    "batch": BatchRunner(),
    "flow": FlowRunner(),
    "finalize": FinalizeRunner(),
    "video": VideoRunner(),
}


def runner_for(request: JobRequest) -> Runner:
    return RUNNERS[request.job_kind()]


def submit_job(request: JobRequest, storage: Storage, resolve_device: Callable[[str], str], speed: SpeedOptions,
               job_class: type[Job] = Job) -> Job:
    """A checked, keyed job for ``request`` by its kind (HTTP thread)."""
    if request.job_kind() == "video":
        return submit_video(request, storage, resolve_device, job_class)
    return submit_image(request, storage, resolve_device, speed, job_class)
