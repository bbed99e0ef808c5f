"""Slowloris (issue 22, finding 1): idle and dripping sockets can neither stall the engine nor
outlive its deadlines (engine/api/guard.py), over plain http and over TLS, nor can sockets that
never finish their TLS handshake. Loopback only, 200-300 sockets, about 20 s each."""

from __future__ import annotations

import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from engine_testlib import ROOT, depth_png, make_job, read_png, wait_for

HEAD_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def guarded(core: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    data = tmp_path_factory.mktemp("guarded")
    engine = core.process.LocalEngine(
        sys.executable, extension_dir=ROOT, data_dir=str(data), log_path=data / "engine.log", device="cpu",
        startup_timeout=120, env={"HF_HUB_OFFLINE": "1"}, extra_args=["--head-timeout", str(HEAD_TIMEOUT_S)])
    engine.start()
    yield engine
    engine.stop()


def served_meanwhile(url: str, client: Any, tiny_models: dict[str, str], tmp_path: Path, depth: float,
                     verify: str | bool = True) -> None:
    """While an attack holds its sockets: /health answers in under 2 s, three times, and an
    authenticated 1-frame job is submitted, run and fetched."""
    for _ in range(3):
        started = time.monotonic()
        answer = requests.get(url + "/health", timeout=5, verify=verify)
        assert answer.status_code == 200 and answer.json()["status"] == "ok", answer.text
        assert time.monotonic() - started < 2.0
    sha = client.upload_blob(depth_png(depth))
    job_id = client.submit(make_job(tiny_models, [{"frame": 1, "depth": sha, "pose": None}], steps=2, batch_size=1))
    assert wait_for(client, job_id, timeout=120)["status"] == "done"
    assert read_png(client.fetch_frame(job_id, 1, str(tmp_path / "1.png"))).shape == (64, 64, 3)


class Attack:
    """``count`` sockets: a third idle, a third dripping a request head, a third dripping a body
    (with the engine's token, so the body is one the engine would read), a byte each per round."""

    def __init__(self, port: int, token: str, count: int) -> None:
        self.port, self.token, self.count = port, token, count
        self.sockets: list[tuple[str, socket.socket]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)

    def __enter__(self) -> Attack:
        for i in range(self.count):
            s = self.connect()
            kind = ("idle", "head", "body")[i % 3]
            if kind == "head":
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-")
            elif kind == "body":
                s.sendall(f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n"
                          "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{".encode())
            self.sockets.append((kind, s))
        self.thread.start()
        return self

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def _drip(self) -> None:
        while not self.stop.wait(0.3):
            for _kind, s in self.sockets:
                try:
                    s.send(b"a")
                except OSError:
                    pass

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        for _kind, s in self.sockets:
            s.close()

    def closed_by_engine(self, within_s: float) -> dict[str, int]:
        """Per kind, how many sockets the engine closed (EOF or reset) within ``within_s``."""
        deadline = time.monotonic() + within_s
        closed: dict[str, int] = {}
        for kind, s in self.sockets:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                while s.recv(65536):
                    pass
                closed[kind] = closed.get(kind, 0) + 1
            except (ConnectionResetError, ssl.SSLError):  # reset, or TLS closed without its close_notify
                closed[kind] = closed.get(kind, 0) + 1
            except (TimeoutError, OSError):
                pass
        return closed


def test_health_and_an_authenticated_job_are_served_while_300_sockets_idle_or_drip(
        guarded: Any, tiny_models: dict[str, str], tmp_path: Path) -> None:
    client = guarded.client(timeout=20)
    with Attack(guarded.port, guarded.token, 300) as attack:
        served_meanwhile(guarded.url, client, tiny_models, tmp_path, 0.2)
        # Every one of them is closed within its deadline: heads within HEAD_TIMEOUT_S, bodies
        # once they fall behind 4 KiB/s after the grace (HEAD_TIMEOUT_S here), or earlier to make room.
        closed = attack.closed_by_engine(within_s=2 * HEAD_TIMEOUT_S + 3)
        assert closed == {"idle": 100, "head": 100, "body": 100}, closed
    assert requests.get(guarded.url + "/health", timeout=5).status_code == 200


class TlsAttack(Attack):
    """The same three kinds over TLS: each socket shakes hands first, so the engine's guard (not
    the TLS layer) is what must close it."""

    def __init__(self, port: int, token: str, count: int, cert: Path) -> None:
        super().__init__(port, token, count)
        self.context = ssl.create_default_context(cafile=str(cert))

    def connect(self) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return self.context.wrap_socket(raw, server_hostname="127.0.0.1")


def tls_served(folder: Path, head_timeout_s: float) -> Any:
    """An engine over TLS (its own certificate, ``served.cert``) with the given head timeout, healthy."""
    from test_shared_engine import make_cert, serve, wait_health

    cert, key = make_cert(folder)
    served = serve(folder, "--token", TLS_TOKEN, "--tls-cert", str(cert), "--tls-key", str(key),
                   "--head-timeout", str(head_timeout_s), scheme="https")
    served.cert = cert  # type: ignore[attr-defined]
    wait_health(served)
    return served


@pytest.fixture(scope="module")
def guarded_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    served = tls_served(tmp_path_factory.mktemp("guarded-tls"), HEAD_TIMEOUT_S)
    yield served
    served.process.terminate()
    try:
        served.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        served.process.kill()
        served.process.wait(timeout=30)


TLS_TOKEN = "tls-token-0123456789abcdef"


def test_over_tls_too(core: Any, guarded_tls: Any, tiny_models: dict[str, str], tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22: the engine stalled "with or without TLS"; the guard runs behind the handshake."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(guarded_tls.cert))
    client = core.client.EngineClient(guarded_tls.url, TLS_TOKEN, timeout=20)
    with TlsAttack(guarded_tls.port, TLS_TOKEN, 300, guarded_tls.cert) as attack:
        served_meanwhile(guarded_tls.url, client, tiny_models, tmp_path, 0.3, verify=str(guarded_tls.cert))
        closed = attack.closed_by_engine(within_s=2 * HEAD_TIMEOUT_S + 3)
        assert closed == {"idle": 100, "head": 100, "body": 100}, closed


# Sockets that never finish a TLS handshake ------------------------------------------------------

ATTACKER = "127.0.0.2"  # another loopback address: the guard's per-client cap is per address
PER_CLIENT = 64  # the engine's --max-connections-per-client default
HANDSHAKE_TIMEOUT_S = 3.0


def client_hello() -> bytes:
    """The first flight of a real TLS client: a ClientHello, which the attack drips a byte at a time."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def closed(s: socket.socket) -> bool:
    """Whether the engine closed this socket (EOF or reset), without waiting or reading data."""
    try:
        readable, _, _ = select.select([s], [], [], 0)
        return bool(readable) and s.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # reset, or already closed here
        return True


class Handshakes(Attack):
    """``count`` TCP connections to a TLS port from ``ATTACKER`` that never finish a handshake:
    half silent, half dripping a ClientHello a byte a round. While ``replenish`` is set a socket
    the engine closed is replaced by a new one, so ``count`` keep trying all along."""

    def __init__(self, port: int, count: int) -> None:
        super().__init__(port, "", count)
        self.hello = client_hello()
        self.sent: dict[int, int] = {}
        self.replenish = threading.Event()
        self.replaced = 0

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5, source_address=(ATTACKER, 0))

    def open(self, kind: str) -> tuple[str, socket.socket]:
        s = self.connect()
        if kind == "drip":
            s.sendall(self.hello[:1])
            self.sent[id(s)] = 1
        return kind, s

    def __enter__(self) -> Handshakes:
        self.sockets = [self.open(("silent", "drip")[i % 2]) for i in range(self.count)]
        self.opened = time.monotonic()
        self.thread.start()
        return self

    def _drip(self) -> None:
        while not self.stop.wait(0.3):
            for i, (kind, s) in enumerate(self.sockets):
                if self.replenish.is_set() and closed(s):
                    s.close()
                    try:
                        self.sockets[i] = self.open(kind)
                        self.replaced += 1
                    except OSError:
                        pass
                elif kind == "drip":
                    sent = self.sent.get(id(s), 0)
                    try:
                        s.send(self.hello[sent:sent + 1])
                        self.sent[id(s)] = sent + 1
                    except OSError:
                        pass

    def still_open(self) -> int:
        return sum(not closed(s) for _kind, s in self.sockets)


@pytest.fixture()
def tls_engine(tmp_path: Path) -> Iterator[Any]:
    try:
        probe = socket.socket()
        probe.bind((ATTACKER, 0))
        probe.close()
    except OSError:
        pytest.skip(f"needs a second loopback address ({ATTACKER}) to attack from")
    served = tls_served(tmp_path, HANDSHAKE_TIMEOUT_S)
    yield served
    if served.process.poll() is None:
        served.process.kill()
        served.process.wait(timeout=30)


def test_tls_handshakes_that_never_finish_are_counted_and_closed(
        core: Any, tls_engine: Any, tiny_models: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop runs a TLS handshake before the HTTP protocol sees a connection; sockets that never
    finish it (silent, or dripping a ClientHello) must count toward the guard's caps, be closed at
    its head timeout (not the loop's 60 s) and not hold the engine's exit on SIGTERM."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_engine.cert))
    client = core.client.EngineClient(tls_engine.url, TLS_TOKEN, timeout=20)
    with Handshakes(tls_engine.port, 200) as attack:
        # The per-client cap: past 64 the oldest handshakes make room, well before their deadline.
        while attack.still_open() > PER_CLIENT and time.monotonic() < attack.opened + HANDSHAKE_TIMEOUT_S - 1:
            time.sleep(0.1)
        assert attack.still_open() <= PER_CLIENT, "sockets in their TLS handshake are not counted per client"
        attack.replenish.set()  # from here on, 200 keep trying
        served_meanwhile(tls_engine.url, client, tiny_models, tmp_path, 0.4)
        attack.replenish.clear()
        attack.stop.set()
        attack.thread.join(5)
        assert attack.replaced >= 200, attack.replaced  # the engine kept closing them all along
        # Every socket still open is closed by the engine a few seconds past the head timeout.
        done = attack.closed_by_engine(within_s=HANDSHAKE_TIMEOUT_S + 3)
        assert done == {"silent": 100, "drip": 100}, done
    # A fresh 200 open when SIGTERM comes: the engine closes them and stops at once.
    with Handshakes(tls_engine.port, 200):
        time.sleep(0.5)
        started = time.monotonic()
        tls_engine.process.terminate()
        try:
            tls_engine.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("the engine did not stop within 15 s of SIGTERM with 200 sockets in their handshake")
        assert time.monotonic() - started < HANDSHAKE_TIMEOUT_S, time.monotonic() - started
