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

import errno
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..hashing import file_sha256
from ..jobs.request import JobRequest, frame_entries
from ..prefs import Prefs
from ..timeline import takes as takes_core
from ..timeline.paths import frame_name

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
    window: int = 0  # VIDEO: the window being generated, of `windows`
    windows: int = 0


@dataclass
class ShotJob:
    """Everything needed to generate one shot, as plain data (safe on any thread)."""

    shot: str
    frames: list[int]
    conditioning_dir: Path
    takes_dir: Path
    maps: dict[int, dict[str, Path | None]]  # frame → {"depth": path, "pose": path|None, "flow": path|None}
    request: JobRequest  # the engine request without "frames" (core/jobs/request.py)
    models: dict[str, Any]
    prompts: dict[str, Any]
    settings: dict[str, Any]
    uploads: list[Path] = field(default_factory=list)  # other blobs the request names (VIDEO reference images)
    # Animated settings (core/scene/anim_sample.py): frame -> engine fields that differ from the job's.
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


def control_hash(maps: dict[int, dict[str, Path | None]], hashes: dict[Path, str]) -> str:
    canonical = json.dumps(
        {str(f): {k: (hashes[p] if p is not None else None) for k, p in sorted(m.items())} for f, m in sorted(maps.items())},
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class EngineShot:
    """One shot's engine job, one bounded step at a time. Any thread; never touches bpy.

    Steps: hash some control maps (their hashes are the take's identity and the cache key);
    find a cached take or open the take folder; upload one map; submit; poll the engine and
    fetch at most one finished frame. `outcome` is set once the shot has ended. Frames land in
    the take folder as the engine finishes them, and take.json follows, so whatever happens
    (cancel, engine crash, Blender closing) the finished frames stay and say what they are.
    """

    HASH_BUDGET_S = 0.01

    def __init__(self, job: ShotJob, client: Any, *, on_progress: Callable[[Progress], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None) -> None:
        self.job = job
        self.client = client
        self.notify = on_progress or (lambda _p: None)
        self.cancelled = should_cancel or (lambda: False)
        self.phase = "hash"  # hash → take → upload → submit → poll → done
        self.outcome: TakeOutcome | None = None
        self.job_id = ""
        self._to_hash = list(dict.fromkeys(p for m in job.maps.values() for p in m.values() if p is not None))
        self._hashes: dict[Path, str] = {}
        self._uploads: list[tuple[Path, str | None, str]] = []  # (file, expected sha256 or None, what it is)
        self._take_dir: Path | None = None
        self._info: takes_core.TakeInfo | None = None
        self._done: set[int] = set()
        self._cancel_sent = False
        self._status: dict[str, Any] | None = None  # a status not yet acted on: offered, or with frames to fetch
        self.retry_at = 0.0  # monotonic time before which a submit refused for the quota is not tried again
        self._asked = set(job.frames)
        self._size = (int(job.request.width), int(job.request.height))  # every frame must come back so

    @property
    def submitted(self) -> bool:
        return self.phase in ("poll", "done")

    @property
    def throttled(self) -> bool:
        """Ready to submit, but the engine refused for its job quota (429) a moment ago."""
        return self.phase == "submit" and time.monotonic() < self.retry_at

    @property
    def needs_status(self) -> bool:
        """Polling, and the next step would ask the engine for this job's status."""
        return self.phase == "poll" and self._status is None  # an ended shot is in phase "done"

    def offer(self, status: dict[str, Any]) -> None:
        """A status fetched for this job together with others' (``GET /jobs?ids=``): the next
        poll step uses it instead of asking the engine again."""
        self._status = status

    def step(self) -> bool:
        """One bounded step; False when it only found the engine still busy (the caller may wait)."""
        if self.outcome is not None:
            return False
        if self.phase == "hash":
            self._step_hash()
        elif self.phase == "take":
            self._step_take()
        elif self.phase in ("upload", "submit") and self.cancelled():
            self._end(cancelled=True)
        elif self.phase == "upload":
            self._step_upload()
        elif self.phase == "submit":
            return self._step_submit()
        else:
            return self._step_poll()
        return True

    def _step_hash(self) -> None:
        # 1. Hash the control maps: the take's identity and the cache key.
        deadline = time.perf_counter() + self.HASH_BUDGET_S
        while self._to_hash and time.perf_counter() < deadline:
            path = self._to_hash.pop(0)
            self._hashes[path] = file_sha256(path)
        if not self._to_hash:
            self.phase = "take"

    def _step_take(self) -> None:
        job, client = self.job, self.client
        c_hash = control_hash(job.maps, self._hashes)
        r_hash = takes_core.request_hash(c_hash, job.models, job.prompts, job.settings)
        # 2. An identical take already on disk answers at once.
        found = takes_core.find_complete_take(job.takes_dir, r_hash)
        if found is not None:
            folder, info = found
            self.phase = "done"
            self.outcome = TakeOutcome(job.shot, folder, info, reused=True, frames=list(info.frames_total))
            return
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
        self._take_dir, self._info = take_dir, info
        self._done = set(info.frames_done)
        # 4. Upload the maps by content (the engine skips what it has), then the reference images.
        self._uploads = [(path, sha, "map") for path, sha in self._hashes.items()]
        self._uploads += [(path, sha, "reference") for sha, path in job.blobs.items()]
        self._uploads += [(path, None, "video reference") for path in job.uploads]  # named by sha256 in the request
        self.phase = "upload"
        self.notify(Progress(job.shot, len(self._done), len(job.frames)))

    def _step_upload(self) -> None:
        if self._uploads:
            path, sha, kind = self._uploads.pop(0)
            stored = self.client.upload_blob(path.read_bytes())
            if sha is not None and stored != sha:
                if kind == "map":
                    raise GenerationError(f"Engine stored control map {path.name} under another hash: upgrade the engine")
                raise GenerationError(f"Reference image {path} changed while it was being sent: generate again")
        if not self._uploads:
            self.phase = "submit"

    def _step_submit(self) -> bool:
        """Submit; False when the engine's job quota is full (429): the shot waits Retry-After."""
        if self.throttled:
            return False
        job, hashes = self.job, self._hashes
        body = job.request.body(frame_entries(job.frames, job.maps, hashes, job.frame_values))
        try:
            self.job_id = self.client.submit(body)
        except Exception as exc:
            if not getattr(exc, "quota_full", False):
                raise
            self.retry_at = time.monotonic() + (getattr(exc, "retry_after", None) or 1.0)
            log.info("shot '%s': the engine's job quota is full; submitting again in %.1f s", job.shot,
                     self.retry_at - time.monotonic())
            return False
        log.info("shot '%s': job %s submitted", job.shot, self.job_id)
        self.phase = "poll"
        return True

    def _step_poll(self) -> bool:
        # 5. Poll, fetching one finished frame a step, until done, failed or cancelled.
        job, client, info, take_dir = self.job, self.client, self._info, self._take_dir
        assert info is not None and take_dir is not None
        # The status offered by a batch poll, or the last one while it still has frames to
        # fetch (one a step): only a status that was fully acted on is asked for again.
        status, self._status = checked_status(self._status or client.status(self.job_id), self.job_id), None
        if status.get("messages") and status["messages"] != info.notes:
            info.notes = list(status["messages"])
            takes_core.write_take(take_dir, info)
        # Only the frames this shot asked for: an engine listing others is not obeyed.
        fresh = [f for f in status["frames"] if f not in self._done and f in self._asked]
        if fresh:
            frame = fresh[0]
            try:
                client.fetch_frame(self.job_id, frame, take_dir / frame_name(frame), size=self._size,
                                   should_cancel=self.cancelled)
            except Exception as exc:
                if getattr(exc, "code", "") != "cancelled" or not self.cancelled():
                    raise
                # Esc in the middle of a frame's download: the user's cancel, not a failure. The
                # frame is not kept (never half written); the job stops and the finished ones stay.
                try:
                    self._send_cancel()
                except Exception:  # noqa: BLE001 - best effort: the job is cancelled on our side either way
                    log.debug("cancelling %s failed", self.job_id, exc_info=True)
                self._end(cancelled=True)
                return True
            log.info("shot '%s': frame %d fetched", job.shot, frame)
            self._done.add(frame)
            info.frames_done = sorted(self._done)
            takes_core.write_take(take_dir, info)
        window, windows = window_of(status)
        self.notify(Progress(
            job.shot, len(self._done), len(job.frames), int(status.get("step") or 0), int(status.get("steps") or 0),
            status.get("eta_s"), window=window, windows=windows,
        ))
        if len(fresh) > 1:
            self._status = status
            return True  # more finished frames to fetch before the job's end counts
        state = status.get("status")
        if state == "done":
            missing = [f for f in job.frames if f not in self._done]
            if missing:
                self._end(error=f"engine finished without frames {missing[:5]}")
            else:
                info.complete = True
                self._end()
            return True
        if state == "cancelled":
            self._end(cancelled=True)
            return True
        if state == "failed":
            error = status.get("error") or {}
            message = error.get("message") if isinstance(error, dict) else str(error)
            self._end(error=message or "the engine reported a failure")
            return True
        if self.cancelled():
            self._send_cancel()
        return bool(fresh)

    def _send_cancel(self) -> None:
        if not self._cancel_sent:
            self.client.cancel(self.job_id)
            self._cancel_sent = True

    def _end(self, *, cancelled: bool = False, error: str = "") -> None:
        assert self._take_dir is not None and self._info is not None
        self.phase = "done"
        self.outcome = _finish(self._take_dir, self._info, cancelled=cancelled, error=error)


def run_shot(
    job: ShotJob,
    client: Any,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> TakeOutcome:
    """Generate one shot's take in one call: `EngineShot`'s steps in a loop. Any thread; never touches bpy."""
    shot = EngineShot(job, client, on_progress=on_progress, should_cancel=should_cancel)
    while shot.outcome is None:
        if not shot.step():
            time.sleep(POLL_INTERVAL_S)
    return shot.outcome


STATES = ("queued", "running", "done", "cancelled", "failed")


def checked_status(answer: Any, job_id: str) -> dict[str, Any]:
    """A job status with every field the add-on reads of the type API.md gives it.

    An engine's answer is input: a missing or unknown ``status`` ends the shot with a message
    (it would otherwise be polled forever), and a field of the wrong type never reaches a
    ``int()`` in the UI (a non-numeric ``eta_s`` is dropped, not raised out of ``modal()``).
    """
    def bad(what: str) -> GenerationError:
        return GenerationError(f"the engine's status of job {job_id[:40]} is not what it should be ({what}); "
                               "is the engine URL a Viewfinder engine of this version?")

    if not isinstance(answer, dict):
        raise bad("not a JSON object")
    state = answer.get("status")
    if state not in STATES:
        raise bad(f"'status' is {str(state)[:40]!r}, not one of {', '.join(STATES)}")
    frames = answer.get("frames", [])
    if not isinstance(frames, list) or not all(isinstance(f, int) and not isinstance(f, bool) for f in frames):
        raise bad("'frames' is not a list of frame numbers")

    def number(key: str) -> float | None:
        value = answer.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        return float(value) if ok and abs(value) < 1e12 else None

    messages = answer.get("messages")
    error = answer.get("error")
    detail = answer.get("detail")
    return {**answer, "frames": frames, "eta_s": number("eta_s"), "step": int(number("step") or 0),
            "steps": int(number("steps") or 0),
            "messages": [str(m)[:500] for m in messages[:50]] if isinstance(messages, list) else [],
            "error": error if isinstance(error, (dict, str)) or error is None else str(error)[:500],
            "detail": detail if isinstance(detail, dict) else {}}


def window_of(status: dict[str, Any]) -> tuple[int, int]:
    """(window, windows) while a VIDEO job runs its windows; (0, 0) otherwise."""
    detail = status.get("detail") or {}
    window, windows = detail.get("window"), detail.get("windows")
    if status.get("generator") == "VIDEO" and isinstance(window, int) and window > 0:
        return window, windows if isinstance(windows, int) else 0
    return 0, 0


def _finish(take_dir: Path, info: takes_core.TakeInfo, *, cancelled: bool = False, error: str = "") -> TakeOutcome:
    info.cancelled = cancelled
    info.error = error
    takes_core.write_take(take_dir, info)
    return TakeOutcome(info.shot, take_dir, info, cancelled=cancelled, error=error, frames=list(info.frames_done))


def summary(outcome: TakeOutcome) -> str:
    """One line for the report: a take made, reused, cancelled or failed."""
    if outcome.reused:
        return f"Shot '{outcome.shot}': unchanged, take {outcome.info.take} reused from the cache"
    if outcome.complete:
        notes = "".join(f"; {note}" for note in outcome.info.notes)
        return f"Shot '{outcome.shot}': take {outcome.info.take} ({len(outcome.frames)} frames){notes}"
    if outcome.cancelled:
        return (
            f"Shot '{outcome.shot}': cancelled after {len(outcome.frames)} frames "
            f"(kept in {outcome.take_dir}; Generate again to continue)"
        )
    return f"Shot '{outcome.shot}' failed: {outcome.error}"


def shot_message(shot_name: str, exc: BaseException) -> str:
    """The error as the user reads it, naming the shot; a full disk says what to do."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" writing {exc.filename}" if exc.filename else ""
        text = f"the disk is full{where}: free some space, or choose another Output Folder in the preferences"
    else:
        text = str(exc) or exc.__class__.__name__
    return text if shot_name in text else f"Shot '{shot_name}': {text}"


def log_progress(p: Progress) -> None:
    """An `on_progress` for blocking runs: a log line per message."""
    log.info("%s: %d/%d frames", p.shot, p.frames_done, p.frames_total)


def engine_job_task(job: ShotJob, prefs: Prefs, *, report: Callable[[Any], None], cancel: Any) -> TakeOutcome:
    """A `core.worker.Worker` task: connect, then `run_shot`, its `Progress` posted as it comes."""
    from ..client.link import connect  # deferred: starts processes, not needed by plain callers

    return run_shot(job, connect(prefs), on_progress=report, should_cancel=cancel.is_set)
