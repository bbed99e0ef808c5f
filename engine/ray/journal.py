"""The ingress's job table on the shared disk, so that an ingress restarted by Serve (its process
killed, its node lost, a new RayService revision) takes its jobs back instead of forgetting them.

One small JSON file per job under ``<data>/ray/jobs/``: its id, owner (token name), creation
time and request, written atomically at submit; its status and error once it ends. A new
ingress reads them (``entries``) and submits every unfinished job again under its own id: the
frames finished before are in the shared cache, so the job resumes after them. Jobs that had
ended come back as they ended. Files of jobs the table has forgotten are deleted.

Any thread. Imports no ray.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..contract.errors import EngineFault
from ..contract.schema import JobRequest
from ..jobs.job import Job
from ..storage import Storage, atomic_write

logger = logging.getLogger(__name__)

ENDED = ("done", "cancelled", "failed")


class JobJournal:
    def __init__(self, storage: Storage) -> None:
        self.folder = storage.root / "ray" / "jobs"

    def path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.json"

    def record(self, job: Job) -> None:
        """Write the job as it is now (at submit, and again when it ends)."""
        entry = {"id": job.id, "owner": job.owner, "created": job.created,
                 "request": job.request.model_dump(mode="json", exclude_defaults=True),
                 "status": job.status if job.status in ENDED else None, "error": job.error}
        try:
            atomic_write(self.path(job.id), json.dumps(entry).encode())
        except OSError as exc:  # the job still runs; only a restart would forget it
            logger.warning("Could not journal job %s: %s", job.id, exc)

    def entries(self) -> list[dict[str, Any]]:
        """Every journaled job, oldest first; unreadable files are skipped (and logged)."""
        found = []
        for path in self.folder.glob("*.json"):
            try:
                entry = json.loads(path.read_bytes())
                if isinstance(entry, dict) and isinstance(entry.get("request"), dict):
                    found.append(entry)
            except (OSError, ValueError) as exc:
                logger.warning("Skipping unreadable journal entry %s: %s", path.name, exc)
        return sorted(found, key=lambda e: float(e.get("created") or 0.0))

    def keep_only(self, job_ids: set[str]) -> None:
        """Delete the entries of jobs no longer in the table."""
        for path in self.folder.glob("*.json"):
            if path.stem not in job_ids:
                path.unlink(missing_ok=True)


def restored_job(entry: dict[str, Any], build: Callable[[JobRequest], Job], job_class: type[Job],
                 has_frame: Callable[[str], bool]) -> Job:
    """The journaled job as a new ingress keeps it: submitted again by ``build`` (checked and keyed
    as at its first submit), under its own id and owner; a job that had ended, as it ended.

    A job that can no longer be submitted (a model or map gone meanwhile) comes back failed, with
    the reason: the client sees a clear status instead of waiting on a job nobody runs.
    """
    try:
        request = JobRequest.model_validate(entry["request"])
        job = build(request)
    except (EngineFault, ValidationError, ValueError) as exc:
        message = exc.message if isinstance(exc, EngineFault) else str(exc)
        job = job_class(id=str(entry["id"]), request=JobRequest.model_construct(**entry["request"]), refs={},
                        key=None, frame_keys={})  # type: ignore[arg-type]
        job.finish("failed", EngineFault(
            f"the engine restarted and could not resume this job: {message[:300]}; generate again "
            "(finished frames come from the cache)", code=getattr(exc, "code", "engine_restarted")))
    job.id, job.owner = str(entry["id"]), str(entry.get("owner") or "default")
    job.created = float(entry.get("created") or job.created)
    if entry.get("status") in ENDED:
        job.done = {n: key for n, key in job.frame_keys.items() if has_frame(key)}
        job.status = job.phase = str(entry["status"])
        job.error = entry.get("error")
        job.finished = job.finished or job.created
    return job
