"""Generate a shot: control maps → engine job → take folder → (main thread) strip.

Split by thread, as in Flamenco's add-on:
- `collect_shot` (main thread, reads bpy) turns a shot into a plain `ShotJob`;
- `run_shot` (any thread, never touches bpy) uploads the maps, runs the engine
  job, writes frames into the take folder as they finish, and returns a
  `TakeOutcome`; it reports progress through a callback and stops when
  `should_cancel()` turns true;
- `place_outcome` (main thread) puts a finished take on the VSE.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import takes as takes_core
from .paths import frame_name
from .request import JobRequest, frame_entries

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2


class GenerationError(RuntimeError):
    """A shot could not be generated; the message names the shot and the fix."""


@dataclass
class Progress:
    """A small message from the worker to the main thread."""

    shot: str
    frames_done: int
    frames_total: int
    step: int = 0
    steps: int = 0
    eta_s: float | None = None
    message: str = ""


@dataclass
class ShotJob:
    """Everything needed to generate one shot, as plain data (safe on any thread)."""

    shot: str
    frames: list[int]
    conditioning_dir: Path
    takes_dir: Path
    maps: dict[int, dict[str, Path | None]]  # frame → {"depth": path, "pose": path|None, "flow": path|None}
    request: JobRequest  # the engine request without "frames" (core/request.py)
    models: dict[str, Any]
    prompts: dict[str, Any]
    settings: dict[str, Any]
    uploads: list[Path] = field(default_factory=list)  # other blobs the request names (VIDEO reference images)
    # Animated settings (core/anim_sample.py): frame -> engine fields that differ from the job's.
    frame_values: dict[int, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    blobs: dict[str, Path] = field(default_factory=dict)  # sha256 → file (reference images) to upload
    characters: list[dict[str, Any]] = field(default_factory=list)  # [{name, mask_ids}] for take.json
    tier: str = ""  # take.json "tier" of a new take: takes.DRAFT, FINAL or FINALIZED (Finalize Take)


@dataclass
class TakeOutcome:
    shot: str
    take_dir: Path | None
    info: takes_core.TakeInfo | None
    reused: bool = False
    cancelled: bool = False
    error: str = ""
    frames: list[int] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.info is not None and self.info.complete


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def control_hash(maps: dict[int, dict[str, Path | None]], hashes: dict[Path, str]) -> str:
    canonical = json.dumps(
        {str(f): {k: (hashes[p] if p is not None else None) for k, p in sorted(m.items())} for f, m in sorted(maps.items())},
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def run_shot(
    job: ShotJob,
    client: Any,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> TakeOutcome:
    """Generate one shot's take. Any thread; never touches bpy.

    Frames land in the take folder as the engine finishes them, and take.json
    follows, so whatever happens (cancel, engine crash, Blender closing) the
    finished frames stay and say what they are.
    """
    notify = on_progress or (lambda _p: None)
    cancelled = should_cancel or (lambda: False)

    # 1. Hash the control maps: the take's identity and the cache key.
    hashes: dict[Path, str] = {}
    for frame_maps in job.maps.values():
        for path in frame_maps.values():
            if path is not None and path not in hashes:
                hashes[path] = file_sha256(path)
    c_hash = control_hash(job.maps, hashes)
    r_hash = takes_core.request_hash(c_hash, job.models, job.prompts, job.settings)

    # 2. An identical take already on disk answers at once.
    found = takes_core.find_complete_take(job.takes_dir, r_hash)
    if found is not None:
        folder, info = found
        return TakeOutcome(job.shot, folder, info, reused=True, frames=list(info.frames_total))

    # 3. Continue an unfinished take of the same request, or start a new one.
    resumable = takes_core.find_resumable_take(job.takes_dir, r_hash)
    if resumable is not None:
        take_dir, info = resumable
        info.cancelled = False
        info.error = ""
    else:
        take_dir = takes_core.new_take_dir(job.takes_dir)
        info = takes_core.TakeInfo(
            shot=job.shot, take=take_dir.name, prompt=job.prompts["prompt"],
            style_prompt=job.prompts["style_prompt"], negative_prompt=job.prompts["negative_prompt"],
            seed=int(job.settings["seed"]), models=job.models, settings=job.settings,
            control_hash=c_hash, request_hash=r_hash, frames_total=list(job.frames),
            characters=list(job.characters), tier=job.tier,
        )
    info.engine = getattr(client, "base_url", "")
    takes_core.write_take(take_dir, info)
    done = set(info.frames_done)
    notify(Progress(job.shot, len(done), len(job.frames), message="uploading control maps"))

    # 4. Upload the maps by content (the engine skips what it has) and submit.
    for path, sha in hashes.items():
        if cancelled():
            return _finish(take_dir, info, cancelled=True)
        if client.upload_blob(path.read_bytes()) != sha:
            raise GenerationError(f"Engine stored control map {path.name} under another hash: upgrade the engine")
    for sha, path in job.blobs.items():
        if cancelled():
            return _finish(take_dir, info, cancelled=True)
        if client.upload_blob(path.read_bytes()) != sha:
            raise GenerationError(f"Reference image {path} changed while it was being sent: generate again")
    for path in job.uploads:  # VIDEO reference images, named in the request by their sha256
        if cancelled():
            return _finish(take_dir, info, cancelled=True)
        client.upload_blob(path.read_bytes())
    body = job.request.body(frame_entries(job.frames, job.maps, hashes, job.frame_values))
    job_id = client.submit(body)

    # 5. Poll, fetching frames as they finish, until done, failed or cancelled.
    cancel_sent = False
    while True:
        status = client.status(job_id)
        if status.get("messages") and status["messages"] != info.notes:
            info.notes = list(status["messages"])
            takes_core.write_take(take_dir, info)
        for frame in status.get("frames", []):
            if frame not in done:
                client.fetch_frame(job_id, frame, take_dir / frame_name(frame))
                done.add(frame)
                info.frames_done = sorted(done)
                takes_core.write_take(take_dir, info)
        notify(Progress(
            job.shot, len(done), len(job.frames), int(status.get("step") or 0), int(status.get("steps") or 0),
            status.get("eta_s"), message=window_text(status),
        ))
        state = status.get("status")
        if state == "done":
            missing = [f for f in job.frames if f not in done]
            if missing:
                return _finish(take_dir, info, error=f"engine finished without frames {missing[:5]}")
            info.complete = True
            return _finish(take_dir, info)
        if state == "cancelled":
            return _finish(take_dir, info, cancelled=True)
        if state == "failed":
            error = status.get("error") or {}
            message = error.get("message") if isinstance(error, dict) else str(error)
            return _finish(take_dir, info, error=message or "the engine reported a failure")
        if cancelled() and not cancel_sent:
            client.cancel(job_id)
            cancel_sent = True
        time.sleep(POLL_INTERVAL_S)


def window_text(status: dict[str, Any]) -> str:
    """'window 2 of 3' while a VIDEO job runs its windows; '' otherwise."""
    detail = status.get("detail") or {}
    if status.get("generator") == "VIDEO" and detail.get("window"):
        return f"window {detail['window']} of {detail.get('windows', '?')}"
    return ""


def _finish(take_dir: Path, info: takes_core.TakeInfo, *, cancelled: bool = False, error: str = "") -> TakeOutcome:
    info.cancelled = cancelled
    info.error = error
    takes_core.write_take(take_dir, info)
    return TakeOutcome(info.shot, take_dir, info, cancelled=cancelled, error=error, frames=list(info.frames_done))
