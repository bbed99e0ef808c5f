"""A total deadline (and Esc) for the part of a request that ``requests`` cannot bound: the wait
for the answer's head.

``requests`` times each socket read, not the whole answer: an engine that sends its status line
and then one header byte every few seconds (or drips a TLS handshake) holds a request for as
long as it likes, and Esc cannot end it (issue 22: every download capped by total time). The
body is bounded by core/client/downloads.py once the head is in; until then this module does
it: each connection the client opens registers its socket with the calling thread's `Watch`,
and one shared thread shuts the socket down when the watch's deadline passes or its
``should_cancel()`` turns true, so the blocked read returns at once.

Plain Python + requests/urllib3 (1.26 or 2.x, as Blender bundles them); any thread.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

POLL_S = 0.1

_current = threading.local()  # the Watch of the request this thread is making
_lock = threading.Lock()
_watches: set[Watch] = set()
_thread: threading.Thread | None = None


class Watch:
    """One request's deadline and cancel; ``fired`` says why its sockets were shut down."""

    def __init__(self, deadline: float, should_cancel: Callable[[], bool] | None) -> None:
        self.deadline = deadline
        self.started = time.monotonic()
        self.should_cancel = should_cancel
        self.connections: list[tuple[Any, socket.socket, int]] = []  # (urllib3 connection, raw socket, its fd)
        self.fired: str | None = None  # "too_slow" or "cancelled"

    def __enter__(self) -> Watch:
        global _thread
        _current.watch = self
        with _lock:
            _watches.add(self)
            if _thread is None:
                _thread = threading.Thread(target=_run, name="viewfinder-answer-deadline", daemon=True)
                _thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _current.watch = None
        with _lock:  # after this the sockets are never touched: they may close and their fds be reused
            _watches.discard(self)

    def due(self, now: float) -> str | None:
        if now > self.deadline:
            return "too_slow"
        try:
            if self.should_cancel is not None and self.should_cancel():
                return "cancelled"
        except Exception:  # noqa: BLE001 - a broken callback must not stop the watcher
            return None
        return None

    def fire(self, reason: str) -> None:
        """Shut every socket of this request down (under ``_lock``): a blocked read returns."""
        self.fired = reason
        for conn, raw, fd in self.connections:
            shut_down(_descriptor(conn, raw, fd))


def _descriptor(conn: Any, raw: socket.socket, fd: int) -> int:
    """The connection's socket descriptor while it is open, else -1. The request is in progress
    (its watch is registered, and ``_lock`` is held), so an open descriptor is still its own."""
    for sock in (getattr(conn, "sock", None), raw):
        if sock is not None and sock.fileno() != -1:
            return int(sock.fileno())
    # A TLS handshake in progress: urllib3 (1.26 and 2.x) keeps the raw socket as the
    # connection's until the SSL socket it was handed to (same descriptor) has shaken hands.
    # A connection that was closed has no socket (None), so its descriptor is never touched.
    return fd if getattr(conn, "sock", None) is raw else -1


def shut_down(fd: int) -> None:
    """shutdown(2) on ``fd`` without closing it (the thread reading it closes it, as ever)."""
    if fd < 0:
        return
    try:
        shadow = socket.socket(fileno=fd)
    except OSError:
        return
    try:
        shadow.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        shadow.detach()


def _run() -> None:
    global _thread
    while True:
        time.sleep(POLL_S)
        now = time.monotonic()
        with _lock:
            if not _watches:
                _thread = None
                return
            for watch in list(_watches):
                if watch.fired is None:
                    reason = watch.due(now)
                    if reason is not None:
                        watch.fire(reason)


def _register(conn: Any, raw: socket.socket) -> None:
    watch = getattr(_current, "watch", None)
    if watch is None:
        return
    with _lock:
        watch.connections.append((conn, raw, raw.fileno()))
        if watch.fired is not None:  # already due: do not let a new connection outlive it
            watch.fire(watch.fired)


class _WatchedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        raw = super()._new_conn()
        _register(self, raw)
        return raw


class _WatchedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        raw = super()._new_conn()
        _register(self, raw)
        return raw


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """requests' adapter whose connections register with the thread's `Watch`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if hasattr(manager, "pool_classes_by_scheme"):
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager
