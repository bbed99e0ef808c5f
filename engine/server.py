"""The HTTP API (engine/API.md) on FastAPI. Handlers run on uvicorn's threads and only
touch the job table and the disk; the model runs on the JobManager's worker thread."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .errors import BadRequest, EngineFault
from .jobs import JobManager
from .schema import SHA256_RE, JobRequest, field_path

logger = logging.getLogger(__name__)

MAX_BLOB_BYTES = 512 * 1024 * 1024


def _error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message, "field": field}})


def create_app(manager: JobManager, token: str | None) -> FastAPI:
    """Build the app around a JobManager; starts its worker with the app, stops it after."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager.start()
        yield
        manager.stop()

    app = FastAPI(title="Viewfinder engine", version=__version__, lifespan=lifespan)

    def require_token(request: Request) -> None:
        if not token:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        # compare_digest: a plain == leaks the token's prefix through response timing.
        if not given or not secrets.compare_digest(given.encode(), token.encode()):
            raise EngineFault(
                "missing or wrong engine token: send 'Authorization: Bearer <token>' with the token the "
                "engine was started with (Preferences ▸ Engine ▸ Token, or VIEWFINDER_ENGINE_TOKEN)",
                code="unauthorized", status=401,
            )

    @app.exception_handler(EngineFault)
    async def on_fault(request: Request, exc: EngineFault) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = exc.errors()[0]
        loc = tuple(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            return _error(400, "invalid_json", f"the body is not valid JSON: {first.get('msg')}", "body")
        # A model-level check (check_inputs) has no field in loc; its message names it.
        name = field_path(loc)
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        return _error(422, "invalid_field", f"{name}: {message}", name)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "device": manager.default_device,
                "queue": manager.queue_length(), "auth": bool(token)}

    auth = [Depends(require_token)]

    @app.head("/blobs/{sha}", dependencies=auth)
    def head_blob(sha: str) -> Response:
        return Response(status_code=200 if manager.storage.has_blob(sha) else 404)

    @app.put("/blobs/{sha}", dependencies=auth, status_code=201)
    async def put_blob(sha: str, request: Request) -> dict[str, Any]:
        if not SHA256_RE.match(sha):
            raise BadRequest("the blob id in the URL must be a lowercase hex sha256", field="sha256")
        data = await request.body()
        if len(data) > MAX_BLOB_BYTES:
            raise BadRequest(f"blob is larger than {MAX_BLOB_BYTES} bytes", field="body")
        if not manager.storage.put_blob(sha, data):
            raise BadRequest("the body's sha256 does not match the one in the URL; resend the blob",
                             field="sha256", code="hash_mismatch")
        return {"sha256": sha, "size": len(data)}

    @app.post("/jobs", dependencies=auth, status_code=202)
    def submit(request: JobRequest) -> dict[str, Any]:
        job = manager.submit(request)
        return {"id": job.id, "status": job.status, "cached_frames": sorted(job.cached),
                "frames_total": len(job.frame_keys)}

    @app.get("/jobs/{job_id}", dependencies=auth)
    def status(job_id: str) -> dict[str, Any]:
        return manager.get(job_id).to_json()

    @app.post("/jobs/{job_id}/cancel", dependencies=auth)
    def cancel(job_id: str) -> dict[str, Any]:
        return manager.cancel(job_id).to_json()

    @app.get("/jobs/{job_id}/frames/{frame}", dependencies=auth)
    def frame(job_id: str, frame: int) -> FileResponse:
        return FileResponse(manager.frame_path(job_id, frame), media_type="image/png")

    return app
