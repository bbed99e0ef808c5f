"""The add-on's client against a stand-in hostile engine (issue 22, finding 4 and its Medium and
Low kin): frames checked against the job's size before anything decodes them, every download
capped in bytes and in time (its head as well as its body), Esc ending a dripped one, redirects not
followed, TLS failures named.
Loopback stand-in servers only; each case bounded to a few seconds."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_testlib import depth_png, pose_png
from test_shared_engine import _Canned, serving

SIZE = (64, 64)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int, height: int, *, depth: int = 1, color: int = 0, second: tuple[int, int] | None = None) -> bytes:
    """A whole PNG of width x height (1-bit grey by default: tiny on the wire however large)."""
    row = b"\0" + b"\0" * ((width * {0: 1, 2: 3}[color] * depth + 7) // 8)
    head = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
    if second:
        head += chunk(b"IHDR", struct.pack(">IIBBBBB", *second, depth, color, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + head + chunk(b"IDAT", zlib.compress(row * height, 9)) + chunk(b"IEND", b"")


class Frames(_Canned):
    """Answers every frame request with the class's ``body``; counts them."""

    body = b""
    gets = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).gets += 1
        self.answer(200, self.body)


def frame_server(body: bytes) -> type[Frames]:
    return type("FramesOf", (Frames,), {"body": body, "gets": 0})


@pytest.mark.parametrize("body, why", [
    (png(30000, 30000), "30000x30000"),  # 120 kB on the wire, 900 MP in Blender
    (png(7, 9), "7x9"),
    (png(64, 64, second=(30000, 30000)), "more than one image header"),
    (png(64, 64, depth=8, color=2)[:-40] + png(64, 64)[-40:], "checksum"),
])
def test_a_frame_not_of_the_jobs_size_is_refused_before_anything_decodes_it(core: Any, tmp_path: Path, body: bytes,
                                                                           why: str) -> None:
    handler = frame_server(body)
    with serving(handler) as url:
        client = core.client.EngineClient(url, "t", timeout=5)
        with pytest.raises(core.client.EngineError) as info:
            client.fetch_frame("job", 1, str(tmp_path / "0001.png"), size=SIZE)
    assert why in info.value.message and info.value.code in ("frame_refused", "damaged_frame"), info.value.message
    assert list(tmp_path.iterdir()) == []  # nothing saved, not even a temporary file
    assert handler.gets <= 2


def test_a_frame_of_the_jobs_size_is_saved(core: Any, tmp_path: Path) -> None:
    from PIL import Image

    with serving(frame_server(pose_png(size=64))) as url:
        path = core.client.EngineClient(url, "t").fetch_frame("job", 1, str(tmp_path / "0001.png"), size=SIZE)
    assert Image.open(path).size == SIZE
    with serving(frame_server(depth_png(0.3))) as url:  # 16-bit grey too
        core.client.EngineClient(url, "t").fetch_frame("job", 2, str(tmp_path / "0002.png"), size=SIZE)


class Endless(_Canned):
    """A frame whose body never ends (chunked), or drips a byte every ``drip_s``."""

    drip_s = 0.0
    gets = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).gets += 1
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        start = png(64, 64)[:33]
        payload = start if self.drip_s else start + b"\0" * (1 << 20)
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            for _ in range(100_000):
                if self.drip_s:
                    time.sleep(self.drip_s)
                    self.wfile.write(b"1\r\n\0\r\n")
                else:
                    self.wfile.write(b"%x\r\n%s\r\n" % (1 << 20, b"\0" * (1 << 20)))
                self.wfile.flush()
        except OSError:
            pass


def test_an_endless_frame_is_cut_at_its_size_and_fetched_once(core: Any, tmp_path: Path) -> None:
    handler = type("EndlessFrame", (Endless,), {"gets": 0})
    with serving(handler) as url:
        started = time.monotonic()
        with pytest.raises(core.client.EngineError) as info:
            core.client.EngineClient(url, "t", timeout=5).fetch_frame("job", 1, str(tmp_path / "0001.png"), size=SIZE)
    assert info.value.code == "frame_refused" and "larger than" in info.value.message
    assert handler.gets == 1 and time.monotonic() - started < 10
    assert list(tmp_path.iterdir()) == []


def test_a_dripped_frame_times_out_and_esc_ends_it(core: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core.client, "ANSWER_DEADLINE_S", 1.5)
    handler = type("Drip", (Endless,), {"drip_s": 0.2, "gets": 0})
    with serving(handler) as url:
        client = core.client.EngineClient(url, "t", timeout=5)
        started = time.monotonic()
        with pytest.raises(core.client.EngineError) as info:  # past its total time
            client.fetch_frame("job", 1, str(tmp_path / "0001.png"), size=SIZE)
        assert "in time" in info.value.message and time.monotonic() - started < 5
        monkeypatch.setattr(core.client, "ANSWER_DEADLINE_S", 600.0)
        pressed = threading.Event()
        threading.Timer(0.5, pressed.set).start()
        started = time.monotonic()
        with pytest.raises(core.client.EngineError) as info:  # Esc
            client.fetch_frame("job", 1, str(tmp_path / "0001.png"), size=SIZE, should_cancel=pressed.is_set)
        assert info.value.code == "cancelled" and time.monotonic() - started < 3
    assert list(tmp_path.iterdir()) == []


class HugeStatus(_Canned):
    def do_GET(self) -> None:  # noqa: N802
        if "declared" in self.path:
            self.send_response(200)
            self.send_header("Content-Length", str(300 * 1024 * 1024))
            self.end_headers()
            self.wfile.write(b'{"status": "running", "frames": [' + b"1, " * 100_000)
            return
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        piece = b"1, " * 100_000
        try:
            self.wfile.write(b'6\r\n{"a": \r\n')
            for _ in range(2000):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        except OSError:
            pass


@pytest.mark.parametrize("job", ["declared", "streamed"])
def test_a_huge_status_is_refused_without_being_read(core: Any, job: str) -> None:
    with serving(HugeStatus) as url:
        started = time.monotonic()
        with pytest.raises(core.client.EngineError) as info:
            core.client.EngineClient(url, "t", timeout=5).status(job)
    assert info.value.code == "bad_answer" and "larger than" in info.value.message
    assert time.monotonic() - started < 15


class Redirecting(_Canned):
    target = ""

    def do_POST(self) -> None:  # noqa: N802
        self.send_response(307)
        self.send_header("Location", self.target + "/jobs")
        self.send_header("Content-Length", "0")
        self.end_headers()


class Elsewhere(_Canned):
    seen: list[str] = []

    def do_POST(self) -> None:  # noqa: N802
        type(self).seen.append(self.headers.get("Authorization", ""))
        self.answer(202, b'{"id": "stolen"}')


def test_a_redirect_is_not_followed_with_the_job_and_token(core: Any) -> None:
    with serving(Elsewhere) as other:
        handler = type("RedirectTo", (Redirecting,), {"target": other})
        with serving(handler) as url:
            with pytest.raises(core.client.EngineError) as info:
                core.client.EngineClient(url, "secret", timeout=5).submit({"shot": "x"})
    assert info.value.code == "redirect" and Elsewhere.seen == []


def test_a_tls_failure_is_named_not_called_unreachable(core: Any) -> None:
    with serving(Frames) as url:  # plain http where https is expected
        with pytest.raises(core.client.EngineError) as info:
            core.client.EngineClient(url.replace("http://", "https://"), "t", timeout=5).health()
    assert info.value.code == "tls_error" and "not reachable" not in info.value.message


@contextlib.contextmanager
def dripping_server(start: bytes, drip_s: float = 0.2) -> Iterator[str]:
    """A raw stand-in that, to whatever it is sent, answers ``start`` and then one more byte every
    ``drip_s``, never finishing: a response head (or a TLS handshake) that is still arriving."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(start)
                while not stop.wait(drip_s):
                    conn.sendall(b"X")
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


# A status line and then a header dripped forever; a TLS record header announcing 16 kB of
# handshake and then its bytes dripped: in both the answer never starts, so the body's own
# deadline (above) is never reached, and every read gets its byte long before its timeout.
@pytest.mark.parametrize("scheme, start", [("http", b"HTTP/1.1 200 OK\r\nX-Drip: "),
                                           ("https", b"\x16\x03\x03\x40\x00")])
def test_an_answer_whose_head_drips_times_out_and_esc_ends_it(core: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, scheme: str,
                                                              start: bytes) -> None:
    monkeypatch.setattr(core.client, "ANSWER_DEADLINE_S", 1.5)
    with dripping_server(start) as address:
        client = core.client.EngineClient(f"{scheme}://{address}", "t", timeout=5)
        for call in (lambda: client.status("job"),
                     lambda: client.fetch_frame("job", 1, str(tmp_path / "0001.png"), size=SIZE)):
            started = time.monotonic()
            with pytest.raises(core.client.EngineError) as info:
                call()
            assert info.value.code == "timeout" and "in time" in info.value.message, info.value.message
            assert time.monotonic() - started < 4
        monkeypatch.setattr(core.client, "ANSWER_DEADLINE_S", 600.0)
        pressed = threading.Event()
        threading.Timer(0.5, pressed.set).start()
        started = time.monotonic()
        with pytest.raises(core.client.EngineError) as info:  # Esc while the head drips
            client.fetch_frame("job", 1, str(tmp_path / "0001.png"), size=SIZE, should_cancel=pressed.is_set)
        assert info.value.code == "cancelled" and time.monotonic() - started < 3
    assert list(tmp_path.iterdir()) == []
