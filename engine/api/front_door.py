"""The engine's front door: a plain ASGI layer in front of FastAPI that checks, in order,
the Host header (loopback engines), the token and the body size, before a single byte
of the body is read. A request without a valid token costs the engine one header
parse, whatever it claims to send; a body past its limit is refused at its
Content-Length, or as soon as the streamed bytes pass the limit.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..contract.errors import EngineFault
from .auth import DEFAULT_OWNER, Tokens

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = {"/health"}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
UNAUTHORIZED = ("missing or wrong engine token: send 'Authorization: Bearer <token>' with the token the engine "
                "was started with (Preferences ▸ Engine ▸ Token, or VIEWFINDER_ENGINE_TOKEN)")


def error_body(code: str, message: str, field: str | None = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "field": field}}).encode()


def fault_from_exception(exc: BaseException) -> EngineFault:
    """A JSON-able fault for an unexpected exception: names the problem, never a traceback."""
    if isinstance(exc, EngineFault):
        return exc
    if isinstance(exc, OSError):
        if exc.errno == errno.ENAMETOOLONG:
            return EngineFault("a name in the request is too long for the engine's file system", code="bad_request",
                               status=400)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return EngineFault("the engine's disk is full: free space or lower the cache quota "
                               "(`python -m engine cache prune --quota ...`), then try again",
                               code="disk_full", status=507)
        return EngineFault(f"the engine could not read or write its data folder ({exc.strerror or 'I/O error'})",
                           code="storage_error", status=500)
    return EngineFault(f"the engine failed on this request: {type(exc).__name__}; see the engine's log",
                       code="engine_error", status=500)


def host_name(header: str) -> str:
    """The host part of a Host header ('[::1]:8765' -> '::1', 'a.b:80' -> 'a.b'); anything after a
    bracketed address but a port ('[::1]evil.example') keeps the whole header, which no allowed name is."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        rest = header[end + 1:] if end > 0 else "?"
        if rest and not (rest.startswith(":") and rest[1:].isdigit() and rest[1:].isascii()):
            return header
        return header[1:end]
    if header.count(":") == 1:
        host, port = header.split(":")
        return host if port.isdigit() and port.isascii() else header
    return header


class FrontDoor:
    """Host check, token check and body limits, before the app reads anything."""

    def __init__(self, app: ASGIApp, tokens: Tokens, *, json_limit: int, blob_limit: int,
                 allowed_hosts: set[str] | None = None, max_requests: int | None = None) -> None:
        self.app = app
        self.max_requests = max_requests  # requests in progress at once; past it a JSON 503
        self.in_progress = 0
        self.tokens = tokens
        self.json_limit = json_limit
        self.blob_limit = blob_limit
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.max_requests is not None and self.in_progress >= self.max_requests:
            await self._reply(send, 503, "engine_busy", f"the engine is serving {self.in_progress} requests, as "
                              "many as it takes at once; try again in a moment")
            return
        self.in_progress += 1
        try:
            await self._serve(scope, receive, send)
        finally:
            self.in_progress -= 1

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[str, str] = {}
        for key, value in scope.get("headers", []):
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        path = scope.get("path", "")
        # 1. Host: a loopback engine answers only to loopback names (DNS rebinding).
        if self.allowed_hosts is not None and host_name(headers.get("host", "")) not in self.allowed_hosts:
            await self._reply(send, 421, "bad_host", "this engine only answers requests addressed to "
                              f"{', '.join(sorted(self.allowed_hosts))} (Host header); use http://127.0.0.1:<port>")
            return
        # 2. Token, before the body.
        owner = DEFAULT_OWNER
        if path not in OPEN_PATHS and self.tokens:
            found = self.tokens.owner(headers.get("authorization", ""))
            if found is None:
                await self._reply(send, 401, "unauthorized", UNAUTHORIZED)
                return
            owner = found
        scope.setdefault("state", {})["owner"] = owner
        # 3. Body size: by the declared length, then by what actually arrives.
        is_blob = scope.get("method") == "PUT" and path.startswith("/blobs/")
        limit = self.blob_limit if is_blob else self.json_limit
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit() or not declared.isascii():
                await self._reply(send, 400, "bad_request", "the Content-Length header is not a number", "body")
                return
            if int(declared) > limit:
                await self._reply(send, 413, "body_too_large", f"the body is {int(declared)} bytes; this endpoint "
                                  f"takes at most {limit} bytes", "body")
                return
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        bodiless = scope.get("method") not in ("POST", "PUT") or path in OPEN_PATHS
        if bodiless and (chunked or (declared or "0").strip() != "0"):
            # GET, HEAD and /health (which needs no token) take no body: none is read or buffered.
            await self._reply(send, 400, "bad_request", f"{scope.get('method')} {path} takes no body", "body")
            return
        if not is_blob and declared is None and chunked:
            # A streamed JSON body: read it here, bounded, and hand it on whole.
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                body += message.get("body", b"")
                if len(body) > limit:
                    await self._reply(send, 413, "body_too_large", f"the body is larger than {limit} bytes", "body")
                    return
                if not message.get("more_body", False):
                    break
            receive = _replay(bytes(body), receive)
        # 4. The app; an unexpected error still answers in JSON.
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the answer is JSON whatever failed
            if not started:
                fault = fault_from_exception(exc)
                logger.error("%s %s failed: %s", scope.get("method"), path, exc, exc_info=exc)
                await self._reply(send, fault.status, fault.code, fault.message, fault.field)
            else:
                logger.debug("%s %s failed after answering: %s", scope.get("method"), path, exc)

    @staticmethod
    async def _reply(send: Send, status: int, code: str, message: str, field: str | None = None) -> None:
        body = error_body(code, message, field)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
