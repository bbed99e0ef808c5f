"""The HTTP API (engine/API.md) on FastAPI. Handlers run on uvicorn's threads and only
touch the job table and the disk; the model runs on the JobManager's worker thread."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__, images
from ..cache_budget import CacheBudget
from ..contract.errors import BadRequest, EngineFault, NotFound, QuotaFull
from ..contract.schema import SHA256_RE, JobRequest, field_path
from ..jobs.job import Job
from ..jobs.manager import JobManager
from ..models.codecs import check_map_image
from . import limits
from .auth import DEFAULT_OWNER, Tokens
from .front_door import LOOPBACK_HOSTS, FrontDoor, fault_from_exception

logger = logging.getLogger(__name__)

MAX_BLOB_BYTES = limits.blob_limit()
FIELD_PREFIX = re.compile(r"^([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*)(:? )")


def _error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message, "field": field}})


def _invalid(errors: list[dict[str, Any]]) -> EngineFault:
    """The first pydantic error as a fault naming its field (the same for FastAPI and manual parsing)."""
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return BadRequest(f"the body is not valid JSON: {first.get('msg')}", field="body", code="invalid_json")
    # A model-level check (check_inputs) has no field in loc; its message starts with the field.
    name = field_path(loc)
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    named = FIELD_PREFIX.match(message)
    if name == "body" and named and (named.group(2) == ": " or "[" in named.group(1) or "." in named.group(1)):
        return EngineFault(message, code="invalid_field", status=422, field=named.group(1))
    return EngineFault(f"{name}: {message}", code="invalid_field", status=422, field=name)


def create_app(manager: JobManager, token: str | None | Tokens, *, loopback_only: bool = False,
               max_jobs_per_token: int = limits.MAX_ACTIVE_JOBS_PER_TOKEN, max_requests: int | None = None,
               cache_quota: int | None = None) -> Any:
    """Build the app around a JobManager; starts its worker with the app, stops it after.

    ``token`` is one token or a ``Tokens`` table (a token per person, who then owns their
    jobs). The result is the FastAPI app behind the front door (engine/api/front_door.py);
    ``loopback_only`` turns on the Host-header check of a loopback engine.
    """
    tokens = token if isinstance(token, Tokens) else Tokens.single(token)
    # The cache quota while writing (engine/cache_budget.py); with several tokens, each a half share.
    budget = CacheBudget(manager.storage, cache_quota, manager.blobs_in_use,
                         token_share=0.5 if len(tokens) > 1 else None) if cache_quota is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager.start()
        yield
        manager.stop()

    # 1. The app. No /docs, /redoc or /openapi.json: API.md is the reference, and a shared
    #    engine should not describe itself to whoever reaches the port.
    app = FastAPI(title="Viewfinder engine", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    # 2. Every error as the API's error body.
    add_error_handlers(app)
    # 3. Routes: health, blobs, jobs (each job visible to the token that submitted it only).
    jobs = OwnedJobs(manager, max_jobs_per_token)
    add_health_routes(app, manager, tokens, jobs)
    add_blob_routes(app, manager, budget)
    add_job_routes(app, manager, jobs)
    # 4. The front door: auth, size limits and the Host check before FastAPI sees a request.
    allowed: set[str] | None = set(LOOPBACK_HOSTS) if loopback_only else None
    return FrontDoor(app, tokens, json_limit=limits.MAX_JSON_BYTES, blob_limit=MAX_BLOB_BYTES,
                     allowed_hosts=allowed, max_requests=max_requests)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EngineFault)
    async def on_fault(request: Request, exc: EngineFault) -> JSONResponse:
        response = _error(exc.status, exc.code, exc.message, exc.field)
        if isinstance(exc, QuotaFull):  # a signal to wait, in the HTTP way
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fault = _invalid(list(exc.errors()))
        return _error(fault.status, fault.code, fault.message, fault.field)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        fault = fault_from_exception(exc)
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(fault.status, fault.code, fault.message, fault.field)


def owner_of(request: Request) -> str:
    """The name of the caller's token (set by the front door)."""
    return str(request.scope.get("state", {}).get("owner", DEFAULT_OWNER))


class OwnedJobs:
    """Which token submitted which job, the per-token job limit, and submits checked on a thread."""

    def __init__(self, manager: JobManager, max_jobs_per_token: int) -> None:
        self.manager = manager
        self.max_jobs_per_token = max_jobs_per_token
        self.owners: dict[str, str] = {}  # job id -> the name of the token that submitted it
        self.lock = threading.Lock()
        self.checked_maps: set[tuple[str, str, int, int]] = set()  # (sha, kind, width, height) whose header fits

    def own_job(self, request: Request, job_id: str) -> Job:
        """The job, if the caller's token submitted it; someone else's job is 'unknown'."""
        job = self.manager.get(job_id)
        # A job the Ray ingress resumed after a restart (engine/ray/journal.py) carries its owner.
        if self.owners.get(job_id, job.owner) != owner_of(request):
            raise NotFound(f"no job with id '{job_id}' for this token", code="unknown_job")
        return job

    def check_maps(self, job: JobRequest) -> None:
        """Every image the job names, before anything decodes it (engine/images.py): maps of
        exactly the job's size, Finalize sources within its pixels, video references within the
        reference limit, each whole; flow maps from their .npy header."""
        from ..characters.inputs import MAX_REFERENCE_PIXELS

        storage = self.manager.storage
        pixels = job.width * job.height
        kinds = job.map_kinds()
        if job.finalize is not None:
            kinds = (*kinds, "source")
        wanted = [(getattr(frame, kind), kind, f"frames[{i}].{kind}") for i, frame in enumerate(job.frames)
                  for kind in kinds]
        if job.generator == "VIDEO":
            wanted += [(sha, "reference", f"video.references[{i}]") for i, sha in enumerate(job.video.references)]
        for sha, kind, field in wanted:
            if sha is None or (sha, kind, job.width, job.height) in self.checked_maps:
                continue
            if not storage.has_blob(sha):
                continue  # JobManager.submit names the missing blob
            path = storage.blob_path(sha)
            try:
                if kind == "flow":
                    limits.check_map(storage.read_blob_head(sha, limits.HEADER_BYTES), kind, job.width,
                                     job.height, field)
                elif kind in ("depth", "pose"):
                    images.check(path, size=(job.width, job.height), max_pixels=pixels, field=field,
                                 what=f"{kind} map")
                elif kind in ("normal", "lineart", "seg"):  # their modes too, and seg's class indices
                    check_map_image(path, kind, (job.width, job.height), field)
                elif kind == "source":
                    images.check(path, max_pixels=pixels, field=field, what="finalize source")
                else:
                    images.check(path, max_pixels=MAX_REFERENCE_PIXELS, formats=images.PICTURES, field=field,
                                 what="reference image")
            except BadRequest as exc:
                if exc.code == "bad_map" and hashlib.sha256(path.read_bytes()).hexdigest() != sha:
                    continue  # damaged on the engine's disk, not sent so: the job reports damaged_blob
                raise
            if len(self.checked_maps) > 200_000:
                self.checked_maps.clear()
            self.checked_maps.add((sha, kind, job.width, job.height))

    def active_jobs(self, owner: str) -> int:
        """The token's jobs queued or running: what its quota counts. Reads a snapshot, so the
        event loop may call it without the lock (a thread's submit may add a job meanwhile)."""
        return sum(1 for job in list(self.manager.jobs.values())
                   if job.owner == owner and job.status in ("queued", "running"))

    def check_quota(self, owner: str) -> None:
        """429 with Retry-After past the token's quota (under the lock where it must be exact)."""
        active = self.active_jobs(owner)
        if active >= self.max_jobs_per_token:
            raise QuotaFull(f"this token already has {active} jobs queued or running (the limit is "
                            f"{self.max_jobs_per_token}); submit again when one has finished (Retry-After)",
                            retry_after_s=limits.QUOTA_RETRY_AFTER_S)

    def submit_body(self, body: bytes, owner: str) -> dict[str, Any]:
        """Threadpool: parse, check limits and maps, then queue; never on the event loop."""
        limits.check_key_count(body)  # unknown keys by the hundred thousand: refused before parsing
        try:
            job_request = JobRequest.model_validate_json(body)
        except ValidationError as exc:
            raise _invalid(list(exc.errors())) from None
        limits.check_request(job_request)
        self.check_maps(job_request)
        manager = self.manager
        with self.lock:
            for gone in [j for j in self.owners if j not in manager.jobs]:
                del self.owners[gone]
            self.check_quota(owner)
            job = manager.submit(job_request, owner)
            self.owners[job.id] = owner
        return {"id": job.id, "status": job.status, "cached_frames": sorted(job.cached),
                "frames_total": len(job.frame_keys)}


def add_health_routes(app: FastAPI, manager: JobManager, tokens: Tokens, jobs: OwnedJobs) -> None:
    # An async handler runs on the event loop, so /health answers even when every
    # worker thread is busy with uploads or submits.
    @app.get("/health")
    async def health() -> JSONResponse:
        """ok, or 503 ``unhealthy`` when the data folder cannot be written (and recreated)."""
        writable = manager.storage.writable()
        body = {"status": "ok" if writable else "unhealthy", "version": __version__,
                "device": manager.default_device, "queue": manager.queue_length(), "auth": bool(tokens)}
        if not writable:
            body["error"] = {"code": "storage_error", "field": None,
                             "message": "the engine cannot write its data folder; check its disk and permissions"}
        return JSONResponse(body, status_code=200 if writable else 503)

    @app.get("/limits")
    async def published_limits(request: Request) -> dict[str, Any]:
        """The bounds a client must keep, and its token's quota: Generate All keeps at most
        ``job_quota`` jobs in flight instead of learning the limit from refusals."""
        return limits.published(jobs.max_jobs_per_token, jobs.active_jobs(owner_of(request)))

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        """Who the token belongs to: the add-on checks with it that the engine is the one it started."""
        return {"owner": owner_of(request), "version": __version__}


def add_blob_routes(app: FastAPI, manager: JobManager, budget: CacheBudget | None) -> None:
    @app.head("/blobs/{sha}")
    def head_blob(sha: str) -> Response:
        if not SHA256_RE.match(sha):
            return Response(status_code=400)
        return Response(status_code=200 if manager.storage.has_blob(sha) else 404)

    @app.put("/blobs/{sha}", status_code=201)
    async def put_blob(sha: str, request: Request) -> dict[str, Any]:
        if not SHA256_RE.match(sha):
            raise BadRequest("the blob id in the URL must be a lowercase hex sha256", field="sha256")
        if budget is not None:
            declared = request.headers.get("content-length", "0")
            size = int(declared) if declared.isdigit() else 0
            await run_in_threadpool(budget.admit, owner_of(request), size)
        # Streamed to a temp file, counted and hashed as it arrives: memory stays flat.
        with manager.storage.blob_writer(sha, MAX_BLOB_BYTES) as writer:
            async for chunk in request.stream():
                if not writer.write(chunk):
                    raise limits.TooLarge(f"the blob is larger than the engine's limit of {MAX_BLOB_BYTES} bytes")
            if not writer.commit():
                raise BadRequest("the body's sha256 does not match the one in the URL; resend the blob",
                                 field="sha256", code="hash_mismatch")
            return {"sha256": sha, "size": writer.size}


def add_job_routes(app: FastAPI, manager: JobManager, jobs: OwnedJobs) -> None:
    @app.post("/jobs", status_code=202)
    async def submit(request: Request) -> dict[str, Any]:
        jobs.check_quota(owner_of(request))  # a token at its quota is told so before its body is read
        body = await request.body()  # bounded by the front door
        return await run_in_threadpool(jobs.submit_body, body, owner_of(request))

    @app.get("/jobs")
    async def statuses(request: Request, ids: str = "") -> dict[str, Any]:
        """Several jobs' statuses in one request: a client following many shots polls once a
        round, not once per job (on Ray Serve every request costs the proxy and the ingress
        about 10 ms of CPU, taken from the replicas on a small machine). In memory only, so on
        the event loop."""
        wanted = list(dict.fromkeys(i for i in ids.split(",") if i))
        if len(wanted) > limits.MAX_STATUS_IDS:
            raise BadRequest(f"at most {limits.MAX_STATUS_IDS} job ids per request, got {len(wanted)}; "
                             "ask in several requests", field="ids", code="too_many_ids")
        found: dict[str, Any] = {}
        unknown: list[str] = []
        for job_id in wanted:
            try:
                found[job_id] = jobs.own_job(request, job_id).to_json()
            except NotFound:
                unknown.append(job_id)
        return {"jobs": found, "unknown": unknown}

    @app.get("/jobs/{job_id}")
    async def status(job_id: str, request: Request) -> dict[str, Any]:
        return jobs.own_job(request, job_id).to_json()

    @app.post("/jobs/{job_id}/cancel")
    def cancel(job_id: str, request: Request) -> dict[str, Any]:
        jobs.own_job(request, job_id)
        return manager.cancel(job_id).to_json()

    @app.get("/jobs/{job_id}/frames/{frame}")
    def frame(job_id: str, frame: int, request: Request) -> Response:
        job = jobs.own_job(request, job_id)
        path = manager.frame_path(job_id, frame)
        # A frame damaged on disk is never served: it is dropped, and generated again on resubmit.
        data = manager.storage.read_frame(path.stem)
        if data is None:
            job.done.pop(frame, None)
            raise EngineFault(f"frame {frame} was damaged on the engine's disk and has been deleted; generate "
                              "again and the engine makes it again", code="frame_damaged", status=409)
        return Response(data, media_type="image/png")
