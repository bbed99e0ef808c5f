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

With TLS the guard sees a connection from its first byte too, not from the end of its handshake:
the engine's protocol (``TlsGate``) takes the raw TCP connection, counts it against both caps (as
one waiting for its head, so it is the first to make room), and upgrades it with the event loop's
``start_tls`` bounded by ``head_timeout_s``. A socket that never finishes its handshake (silent,
or dripping a ClientHello) is closed at that deadline, instead of after the loop's default 60 s
uncounted, and is closed at once when the engine stops.

So idle and dripping sockets, with or without TLS, can neither hold the engine's capacity nor
outlive a few seconds, and ``/health`` and authenticated jobs are served meanwhile
(tests/engine/test_slowloris.py). It runs as uvicorn's HTTP protocol class (h11), the one
the engine already used (httptools is not among its requirements).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Protocol

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


class Guarded(Protocol):
    """What the guard needs of a connection: an HTTP one (GuardedProtocol) or one still in its
    TLS handshake (TlsGate)."""

    loop: asyncio.AbstractEventLoop
    peer: str
    idle_since: float
    body_since: float | None

    def waiting_for_head(self) -> bool: ...
    def overdue(self, now: float, limits: GuardLimits) -> bytes | None: ...
    def behind_on_body(self, now: float, limits: GuardLimits) -> bool: ...
    def close_with(self, answer: bytes | None) -> None: ...


class ConnectionGuard:
    """Every open connection of one server, its deadlines and caps. Event-loop thread only."""

    def __init__(self, limits: GuardLimits) -> None:
        self.limits = limits
        self.open: dict[Guarded, None] = {}  # insertion-ordered: oldest first
        self._sweeping = False
        self.closed_slow = 0
        self.evicted = 0
        self.refused = 0

    # -- admission -------------------------------------------------------------

    def admit(self, conn: Guarded) -> bool:
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

    def forget(self, conn: Guarded) -> None:
        self.open.pop(conn, None)

    def _evict(self, among: list[Guarded]) -> bool:
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


class TlsGate(asyncio.Protocol):
    """The protocol of one TLS connection from its TCP accept: counted by the guard and bounded by
    its head deadline while the handshake runs (``loop.start_tls``), then handed to the h11
    protocol. uvicorn gets no ssl context of its own: with one, the loop would run the handshake
    first and call the protocol only after it, leaving a socket that never completes it
    invisible to the guard for the loop's 60 s handshake timeout."""

    guard: ConnectionGuard  # these three set on the subclass `protocol_class` makes
    http_class: type[GuardedProtocol]
    context: ssl.SSLContext

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config, self.server_state, self.app_state = config, server_state, app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.raw: asyncio.Transport | None = None
        self.peer = ""
        self.idle_since = time.monotonic()
        self.body_since: float | None = None
        self.early: list[bytes] = []  # data decrypted before the h11 protocol took over
        self.lost = False
        self.in_tls = False  # start_tls has the transport
        self.http: GuardedProtocol | None = None  # the h11 protocol, once handed over
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.raw = transport
        # No byte may reach this protocol before start_tls takes the transport over: asyncio's loop
        # honours a pause made here (uvloop's does not: it starts reading after connection_made,
        # which is why serve runs a TLS engine on asyncio's loop).
        transport.pause_reading()
        self.idle_since = time.monotonic()
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        # Among uvicorn's connections so that its shutdown closes this one at once.
        self.server_state.connections.add(self)
        if not self.guard.admit(self):
            self.close_with(None)  # no HTTP answer can be read before the handshake
            return
        self.task = self.loop.create_task(self._handshake(transport))

    async def _handshake(self, raw: asyncio.Transport) -> None:
        if self.lost or raw.is_closing():
            self._gone()
            return
        self.in_tls = True
        try:
            limit = self.guard.limits.head_timeout_s
            # The handshake, and a closing TLS connection's wait for its peer's close_notify, both
            # within the head timeout (the loop's defaults are 60 s and 30 s).
            tls = await self.loop.start_tls(raw, self, self.context, server_side=True,
                                            ssl_handshake_timeout=limit, ssl_shutdown_timeout=limit)
        except Exception as exc:  # timed out, closed, or not TLS (OSError, ssl.SSLError mostly)
            logger.debug("TLS handshake with %s did not complete: %r", self.peer, exc)
            self._gone()
            return
        self._gone()
        if self.lost or tls is None or tls.is_closing() or raw.is_closing():
            return
        self.http = http = self.http_class(config=self.config, server_state=self.server_state,
                                           app_state=self.app_state, _loop=self.loop)
        tls.set_protocol(http)
        http.connection_made(tls)  # admitted by the guard afresh; the head deadline starts here
        for data in self.early:
            if not tls.is_closing():
                http.data_received(data)
        self.early.clear()

    def _gone(self) -> None:
        self.guard.forget(self)
        self.server_state.connections.discard(self)

    # As the TLS layer's app protocol until the handshake completes.
    def data_received(self, data: bytes) -> None:
        if not self.in_tls:  # a loop that ignored pause_reading: these bytes belong to the handshake
            logger.error("the event loop read a TLS connection before its handshake began; closing it")
            self.close_with(None)
            return
        self.early.append(data)

    def eof_received(self) -> bool | None:
        return None  # closes the connection: a client that stops sending before its request

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._gone()
        if self.http is not None:  # lost in the moment of the handover: the TLS layer had called us
            self.http.connection_lost(exc)

    # What the guard and uvicorn's shutdown need.
    def waiting_for_head(self) -> bool:
        return True

    def overdue(self, now: float, limits: GuardLimits) -> bytes | None:
        # start_tls's timeout closes it first; this is the backstop should a loop not honour it.
        if self.raw is None or self.raw.is_closing():
            return None
        return SLOW_HEAD if now - self.idle_since > limits.head_timeout_s + SWEEP_S else None

    def behind_on_body(self, now: float, limits: GuardLimits) -> bool:
        return False

    def close_with(self, answer: bytes | None) -> None:
        """Drop the TCP connection (nothing is written: the client expects a TLS record)."""
        if self.raw is not None and not self.raw.is_closing():
            self.raw.abort()
        self._gone()

    def shutdown(self) -> None:
        self.close_with(None)


def protocol_class(limits: GuardLimits, tls: ssl.SSLContext | None = None
                   ) -> tuple[type[asyncio.Protocol], ConnectionGuard]:
    """A protocol class for ``uvicorn.Config(http=...)`` with its own guard (one per server);
    with ``tls`` it terminates TLS itself (give uvicorn no ssl_* options then)."""
    guard = ConnectionGuard(limits)
    http: Any = type("EngineHTTPProtocol", (GuardedProtocol,), {"guard": guard})
    if tls is None:
        return http, guard
    gate: Any = type("EngineTLSProtocol", (TlsGate,), {"guard": guard, "http_class": http, "context": tls})
    return gate, guard
