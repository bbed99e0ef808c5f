"""The connection guard: what uvicorn does not bound, bounded before the app sees a byte.

Without it, sockets that never finish their request head (idle, or dripping a byte now and
then) stay open forever, and once uvicorn's ``limit_concurrency`` counted them every request,
authenticated or not, answered 503 (the slowloris attack). Here, on the event loop:

- a request head must arrive whole within ``head_timeout_s`` of the connection (or of the
  previous response): a socket that sends nothing, or drips, is closed with a JSON 408;
- a body must keep arriving at ``min_body_rate`` bytes/s on average once ``body_grace_s``
  have passed (unless the app itself stopped reading it): a dripped body is closed with a 408;
- a client (peer address) keeps at most ``per_client`` connections and the engine at most
  ``total`` open. Past either cap a new connection takes the place of the connection that
  has waited longest for its request head (an idle or dripping one: it costs a real client
  nothing); only when every connection is serving a request is the new one refused, with
  the contract's JSON 503.

So idle and dripping sockets can neither hold the engine's capacity nor outlive a few
seconds, and ``/health`` and authenticated jobs are served meanwhile
(tests/engine/test_slowloris.py). It runs as uvicorn's HTTP protocol class (h11), the one
the engine already used (httptools is not among its requirements).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

SWEEP_S = 0.5


@dataclass
class GuardLimits:
    head_timeout_s: float = 10.0
    body_grace_s: float = 10.0
    min_body_rate: float = 4096.0  # bytes per second, on average over the body so far
    per_client: int = 64
    total: int = 256


def raw_error(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer in the contract's JSON, written straight to the socket."""
    body = json.dumps({"error": {"code": code, "message": message, "field": None}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode("latin-1")
    return head + body


SLOW_HEAD = raw_error(408, "Request Timeout", "request_timeout",
                      "the request head did not arrive in time; the connection was closed")
SLOW_BODY = raw_error(408, "Request Timeout", "request_timeout",
                      "the request body arrived too slowly; the connection was closed")
BUSY = raw_error(503, "Service Unavailable", "engine_busy",
                 "the engine is serving as many connections as it takes; try again in a moment")


class ConnectionGuard:
    """Every open connection of one server, its deadlines and caps. Event-loop thread only."""

    def __init__(self, limits: GuardLimits) -> None:
        self.limits = limits
        self.open: dict[GuardedProtocol, None] = {}  # insertion-ordered: oldest first
        self._sweeping = False
        self.closed_slow = 0
        self.evicted = 0
        self.refused = 0

    # -- admission -------------------------------------------------------------

    def admit(self, conn: GuardedProtocol) -> bool:
        """Take a new connection in, making room by evicting one waiting for its head; False: refuse."""
        self._start_sweeping(conn.loop)
        peer = conn.peer
        mine = [c for c in self.open if c.peer == peer]
        if len(mine) >= self.limits.per_client and not self._evict(mine):
            self.refused += 1
            return False
        if len(self.open) >= self.limits.total and not self._evict(list(self.open)):
            self.refused += 1
            return False
        self.open[conn] = None
        return True

    def forget(self, conn: GuardedProtocol) -> None:
        self.open.pop(conn, None)

    def _evict(self, among: list[GuardedProtocol]) -> bool:
        """Close the connection that has waited longest for its head, else the one longest
        behind the body rate; False when every connection is busy with a request."""
        now = time.monotonic()
        waiting = [c for c in among if c.waiting_for_head()]
        if waiting:
            victim, answer = min(waiting, key=lambda c: c.idle_since), SLOW_HEAD
        else:
            slow = [c for c in among if c.behind_on_body(now, self.limits)]
            if not slow:
                return False
            victim, answer = min(slow, key=lambda c: c.body_since or now), SLOW_BODY
        victim.close_with(answer)
        self.evicted += 1
        return True

    # -- deadlines -------------------------------------------------------------

    def _start_sweeping(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(SWEEP_S, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        for conn in list(self.open):
            verdict = conn.overdue(now, self.limits)
            if verdict is not None:
                self.closed_slow += 1
                conn.close_with(verdict)
        if loop.is_closed():
            return
        loop.call_later(SWEEP_S, self._sweep, loop)


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with the guard's admission and deadlines."""

    guard: ConnectionGuard  # set on the subclass `protocol_class` makes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.idle_since = time.monotonic()
        self.body_since: float | None = None
        self.body_bytes = 0
        self.peer = self.client[0] if self.client else ""
        if not self.guard.admit(self):
            self.close_with(BUSY)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.SEND_BODY:
            if self.body_since is None:
                self.body_since, self.body_bytes = time.monotonic(), 0
            self.body_bytes += len(data)

    def on_response_complete(self) -> None:
        self.idle_since = time.monotonic()  # the next request head is timed from here
        self.body_since = None
        super().on_response_complete()

    def waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def overdue(self, now: float, limits: GuardLimits) -> bytes | None:
        """SLOW_HEAD or SLOW_BODY when this connection is past a deadline, else None."""
        if self.transport is None or self.transport.is_closing():
            return None
        if self.waiting_for_head():
            return SLOW_HEAD if now - self.idle_since > limits.head_timeout_s else None
        if self.conn.their_state is h11.SEND_BODY and self.body_since is not None:
            if self.flow.read_paused:  # the app is not reading: not the client's fault
                self.body_since, self.body_bytes = now, 0
                return None
            if now - self.body_since > limits.body_grace_s and self.behind_on_body(now, limits):
                return SLOW_BODY
        return None

    def behind_on_body(self, now: float, limits: GuardLimits) -> bool:
        """Sending a body slower than ``min_body_rate`` on average, counting at least one second:
        a body that has not sent 4 KiB is behind from its start (a real upload sends that at once)."""
        if self.conn.their_state is not h11.SEND_BODY or self.body_since is None or self.flow.read_paused:
            return False
        return self.body_bytes < limits.min_body_rate * max(now - self.body_since, 1.0)

    def close_with(self, answer: bytes | None) -> None:
        """Close now, first writing ``answer`` (a whole HTTP response) when given."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            if answer is not None:
                transport.write(answer)
        except (OSError, RuntimeError):  # the peer is gone already
            logger.debug("could not write to a closing connection", exc_info=True)
        transport.close()


def protocol_class(limits: GuardLimits) -> tuple[type[GuardedProtocol], ConnectionGuard]:
    """A protocol class for ``uvicorn.Config(http=...)`` with its own guard (one per server)."""
    guard = ConnectionGuard(limits)
    cls: Any = type("EngineHTTPProtocol", (GuardedProtocol,), {"guard": guard})
    return cls, guard
