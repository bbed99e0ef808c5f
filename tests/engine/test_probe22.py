"""The second probe's findings (issue 22) on the session's engine process, each as a class of
input rather than the probe's exact file: bodies where none belongs, images that decode past
the job's size whatever their header says, and the contract's JSON on every refusal."""

from __future__ import annotations

import socket
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import requests
from engine_testlib import SIZE, depth_png, make_job, wait_for
from test_front_door import raw_request, rss_kb, submit_error


@pytest.fixture()
def port(engine: Any) -> int:
    return int(engine.port)


@pytest.mark.parametrize(("method", "path"), [("POST", "/health"), ("GET", "/health"), ("GET", "/jobs?ids=a")])
def test_routes_without_a_body_refuse_one_before_reading_it(engine: Any, port: int, method: str, path: str) -> None:
    auth = f"Authorization: Bearer {engine.token}\r\n" if "jobs" in path else ""
    status, body = raw_request(port, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
                               "Transfer-Encoding: chunked\r\n\r\n", b"10000\r\n" + b"{" * 65536)
    assert status == 400 and b'"field": "body"' in body, body
    status, body = raw_request(port, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
                               "Content-Length: 5\r\n\r\n", b"hello")
    assert status == 400, body


def test_tokenless_chunked_bodies_are_not_buffered(engine: Any, port: int) -> None:
    """40 sockets each streaming 2 MiB to /health without a token: nothing held (before: 8 MiB each)."""
    before = rss_kb(engine.process.pid)
    sockets = []
    try:
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            sockets.append(s)
        chunk = b"%x\r\n%s\r\n" % (1 << 16, b"x" * (1 << 16))
        for s in sockets:
            try:
                for _ in range(32):
                    s.sendall(chunk)
            except OSError:
                pass  # answered and closed without reading it: the point
        time.sleep(0.5)
        assert rss_kb(engine.process.pid) - before < 20 * 1024
    finally:
        for s in sockets:
            s.close()


def test_a_refusal_for_too_many_requests_is_the_contracts_json(tmp_path: Path) -> None:
    """The front door's own 503 (requests in progress past --max-connections) is JSON, like every error."""
    import asyncio

    from engine.api.auth import Tokens
    from engine.api.front_door import FrontDoor

    release = asyncio.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    door = FrontDoor(slow_app, Tokens.single(None), json_limit=1 << 20, blob_limit=1 << 20, max_requests=1)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def scenario() -> None:
        scope = {"type": "http", "method": "GET", "path": "/health", "headers": []}
        first = asyncio.create_task(door(dict(scope), receive, send))
        await asyncio.sleep(0.01)
        await door(dict(scope), receive, send)  # while the first is in progress
        release.set()
        await first

    asyncio.run(scenario())
    start, body = sent[0], sent[1]
    assert start["status"] == 503 and (b"content-type", b"application/json") in start["headers"]
    assert b'"code": "engine_busy"' in body["body"]
    assert sent[2]["status"] == 200 and door.in_progress == 0


# Findings 2 and 3: one bounded decoder for every image ------------------------------------------


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def ihdr(width: int, height: int, depth: int = 8, color: int = 0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))


def lying_png(claimed: tuple[int, int], size: int = SIZE) -> bytes:
    """A PNG whose first IHDR says size x size and a second one says ``claimed``, with rows for the first."""
    rows = b"".join(b"\0" + b"\x80" * size for _ in range(size))
    return (b"\x89PNG\r\n\x1a\n" + ihdr(size, size) + ihdr(*claimed) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def one_bit_png(side: int) -> bytes:
    """A 1-bit side x side PNG: a few kB on disk, side² pixels once decoded."""
    row = b"\0" + b"\0" * ((side + 7) // 8)
    return b"\x89PNG\r\n\x1a\n" + ihdr(side, side, depth=1) + chunk(b"IDAT", zlib.compress(row * side, 9)) \
        + chunk(b"IEND", b"")


@pytest.mark.parametrize("claimed", [(12000, 12000), (3000, 2000), (SIZE, SIZE * 2)])
def test_a_map_whose_second_header_lies_is_refused_at_submit(core: Any, client: Any, tiny_models: dict[str, str],
                                                            claimed: tuple[int, int]) -> None:
    job = make_job(tiny_models, [{"frame": 1, "depth": client.upload_blob(lying_png(claimed)), "pose": None}])
    error = submit_error(core, client, job)
    assert (error.status, error.code, error.field) == (400, "map_size_mismatch", "frames[0].depth"), error.message
    job = make_job(tiny_models, [{"frame": 1, "depth": client.upload_blob(depth_png(0.1)),
                                  "pose": client.upload_blob(lying_png(claimed))}])
    assert (submit_error(core, client, job).field) == "frames[0].pose"


@pytest.mark.parametrize("side", [12000, 6000])
def test_a_tiny_one_bit_huge_video_reference_is_refused_at_submit(core: Any, client: Any,
                                                                  tiny_models: dict[str, str], side: int) -> None:
    bomb = one_bit_png(side)
    assert len(bomb) < 40_000
    frames = [{"frame": k, "depth": client.upload_blob(depth_png(0.1 * k)), "pose": None} for k in (1, 2)]
    job = make_job(tiny_models, frames, generator="VIDEO",
                   video={"pipeline": "ANIMATEDIFF", "references": [client.upload_blob(bomb)]})
    error = submit_error(core, client, job)
    assert (error.status, error.code, error.field) == (400, "image_too_large", "video.references[0]"), error.message


def test_a_finalize_source_larger_than_the_job_is_refused_at_submit(core: Any, client: Any,
                                                                    tiny_models: dict[str, str]) -> None:
    frames = [{"frame": 1, "depth": client.upload_blob(depth_png(0.3)), "pose": None,
               "source": client.upload_blob(one_bit_png(4000))}]
    job = make_job(tiny_models, frames, finalize={"upscaler": None, "detail_strength": 0.3})
    error = submit_error(core, client, job)
    assert (error.status, error.code, error.field) == (400, "image_too_large", "frames[0].source"), error.message


@pytest.mark.parametrize("image", ["lying", "one_bit"])
@pytest.mark.parametrize("field", ["frames[0].mask", "characters[0].references[0]", "style_reference",
                                   "palette_reference", "frames[0].normal", "frames[0].lineart", "frames[0].seg"])
def test_every_other_image_a_job_names_is_bounded_at_submit(core: Any, client: Any, tiny_models: dict[str, str],
                                                             field: str, image: str) -> None:
    """The rest of "every image the engine opens": masks, character, style and palette references,
    the normal, line-art and seg maps, each with a second header that lies or a tiny 1-bit PNG
    of 6000² pixels: past both the job's size and the reference limit, short of PIL's own backstop."""
    bomb = client.upload_blob(lying_png((6000, 6000)) if image == "lying" else one_bit_png(6000))
    frame: dict[str, Any] = {"frame": 1, "depth": client.upload_blob(depth_png(0.1)), "pose": None}
    overrides: dict[str, Any] = {}
    character = {"name": "Ann", "mask_ids": [3], "references": []}
    if field.startswith("frames[0]."):
        kind = field.split(".")[1]
        frame[kind] = bomb
        if kind == "mask":
            overrides["characters"] = [character]
        else:
            overrides["models_extra"] = {f"controlnet_{kind}": tiny_models[kind]}
    else:
        mask = client.upload_blob(depth_png(0.0))
        frame["mask"] = mask
        overrides["characters"] = [{**character, "references": [bomb] if field.startswith("characters") else []}]
        if field != "palette_reference":
            overrides["models_extra"] = {"ip_adapter": tiny_models["ip_adapter"],
                                         "image_encoder": tiny_models["image_encoder"]}
        if field in ("style_reference", "palette_reference"):
            overrides[field] = bomb
    extra = overrides.pop("models_extra", {})
    job = make_job(tiny_models, [frame], **overrides)
    job["models"].update(extra)
    error = submit_error(core, client, job)
    assert error.status == 400 and error.field == field, (error.code, error.field, error.message)
    assert error.code in ("map_size_mismatch", "mask_size_mismatch", "image_too_large", "reference_too_large"), \
        error.message
    # The message names the image in plain words, and the size it found.
    named = {"style_reference": "the film's style reference", "palette_reference": "the film's palette reference",
             "characters[0].references[0]": "the reference image 1 of Character 'Ann'"}.get(field, "the ")
    assert named in error.message and "the The" not in error.message and "6000" in error.message, error.message


def test_a_damaged_map_is_bad_map_at_submit_not_an_engine_error(core: Any, client: Any,
                                                               tiny_models: dict[str, str]) -> None:
    depth = bytearray(depth_png(0.6))
    depth[60] ^= 0xFF  # inside the image data: the chunk's checksum no longer matches
    job = make_job(tiny_models, [{"frame": 1, "depth": client.upload_blob(bytes(depth)), "pose": None}])
    error = submit_error(core, client, job)
    assert (error.status, error.code, error.field) == (400, "bad_map", "frames[0].depth"), error.message


def test_the_decoder_holds_the_bound_whatever_the_first_header_says() -> None:
    from engine import images
    from engine.contract.errors import BadRequest

    for data in (lying_png((12000, 12000)), lying_png((3000, 2000)), one_bit_png(6000)):
        with pytest.raises(BadRequest) as info:
            images.decode(data, size=(SIZE, SIZE), max_pixels=SIZE * SIZE, field="frames[0].depth", what="depth map")
        assert info.value.code == "map_size_mismatch" and info.value.field == "frames[0].depth"
        with pytest.raises(BadRequest) as info:
            images.decode(data, max_pixels=4096 * 4096 // 4, formats=images.PICTURES, field="x", what="reference")
        assert info.value.code == "image_too_large"
    with pytest.raises(BadRequest) as info:  # a format the caller does not take
        images.decode(b"GIF89a" + b"\0" * 64, max_pixels=SIZE * SIZE, field="f", what="map")
    assert info.value.code == "bad_map"
    with images.decode(depth_png(0.5), size=(SIZE, SIZE), max_pixels=SIZE * SIZE) as img:
        assert img.size == (SIZE, SIZE) and img.mode.startswith("I")


# Low findings --------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["[::1]evil.example", "[::1]:80x", "localhost:abc", "127.0.0.1.evil.example",
                                  "127.0.0.1@evil.example", "[::1", "evil.example:8765"])
def test_a_host_header_is_a_loopback_name_and_nothing_more(engine: Any, port: int, host: str) -> None:
    status, body = raw_request(port, f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n")
    assert status == 421 and b'"bad_host"' in body, host
    assert raw_request(port, "GET /health HTTP/1.1\r\nHost: [::1]:8765\r\n\r\n")[0] == 200


def test_the_token_in_clear_text_to_another_machine_is_warned_about(core: Any) -> None:
    warn = core.client.plain_http_warning
    assert "clear text" in (warn("http://gpu-box.lan:8765", "t") or "")
    assert warn("https://gpu-box.lan:8765", "t") is None and warn("http://127.0.0.1:8765", "t") is None
    assert warn("http://[::1]:8765", "t") is None and warn("http://gpu-box.lan:8765", None) is None


@pytest.mark.parametrize("override, field", [
    ({"prompt_keys": ["a", "x" * 4001]}, "prompt_keys[1]"),
    ({"characters": [{"name": "Ann", "description": "x" * 4001, "mask_ids": [3]}]}, "characters[0].description"),
    ({"characters": [{"name": "Ann", "trigger_words": "x" * 4001, "mask_ids": [3]}]}, "characters[0].trigger_words"),
])
def test_every_text_that_becomes_a_prompt_is_bounded(core: Any, client: Any, tiny_models: dict[str, str],
                                                     override: dict[str, Any], field: str) -> None:
    job = make_job(tiny_models, [{"frame": 1, "depth": client.upload_blob(depth_png(0.1)), "pose": None}], **override)
    error = submit_error(core, client, job)
    assert (error.status, error.code, error.field) == (400, "limit_exceeded", field), error.message


def test_a_model_level_refusal_names_its_field(core: Any, client: Any, tiny_models: dict[str, str]) -> None:
    sha = client.upload_blob(depth_png(0.1))
    job = make_job(tiny_models, [{"frame": 4, "depth": sha, "pose": None}, {"frame": 4, "depth": sha, "pose": None}])
    error = submit_error(core, client, job)
    assert (error.status, error.code, error.field) == (422, "invalid_field", "frames[1].frame"), error.message
    error = submit_error(core, client, {**job, "frames": job["frames"][:1], "control_start": 0.9, "control_end": 0.1})
    assert (error.status, error.field) == (422, "control_start"), error.message


def test_long_model_paths_name_their_field_and_stay_out_of_the_log(core: Any, client: Any, engine: Any,
                                                                   tiny_models: dict[str, str]) -> None:
    log = Path(engine.log_path)
    before = log.stat().st_size
    for path in ("/" + "a" * 300 + "/model", "/x" * 60_000):
        job = make_job(tiny_models, [{"frame": 1, "depth": client.upload_blob(depth_png(0.1)), "pose": None}])
        job["models"]["base"] = path
        error = submit_error(core, client, job)
        assert (error.status, error.code, error.field) == (400, "model_unavailable", "models.base"), error.message
        assert len(error.message) < 1000
    time.sleep(0.5)
    assert log.stat().st_size - before < 20_000


def test_a_log_record_is_bounded() -> None:
    import logging

    from engine.api.cli import SafeFormatter

    record = logging.LogRecord("engine", logging.ERROR, __file__, 1, "failed on %s", ("/x" * 500_000,), None)
    text = SafeFormatter("%(message)s").format(record)
    assert len(text) < 3000 and text.endswith("(1000010 characters)")


# Medium findings --------------------------------------------------------------------------------


def many_keys(count: int) -> bytes:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"

    def name(i: int) -> str:
        out = ""
        while True:
            i, r = divmod(i, 36)
            out += digits[r]
            if not i:
                return out

    keys = ",".join(f'"{name(i)}":0' for i in range(count))
    return ('{"shot": "x", "models": {"base": "a/b"}, "frames": [{"frame": 1}], ' + keys + "}").encode()


def test_a_body_of_700k_unknown_keys_is_refused_cheaply_and_health_stays_quick(engine: Any) -> None:
    body = many_keys(700_000)
    assert len(body) < 8 * 1024 * 1024
    headers = {"Authorization": f"Bearer {engine.token}", "Content-Type": "application/json"}
    answers: list[Any] = []

    def flood() -> None:
        for _ in range(3):
            answers.append(requests.post(engine.url + "/jobs", data=body, headers=headers, timeout=60))

    thread = threading.Thread(target=flood)
    thread.start()
    slowest = 0.0
    while thread.is_alive():
        started = time.monotonic()
        assert requests.get(engine.url + "/health", timeout=10).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    thread.join()
    for answer in answers:
        assert answer.status_code == 422 and answer.json()["error"]["field"] == "body", answer.text[:300]
        assert answer.elapsed.total_seconds() < 2.0
    assert slowest < 1.0


def test_a_cached_frame_changed_in_place_is_never_served(core: Any, client: Any, engine: Any,
                                                         tiny_models: dict[str, str], tmp_path: Path) -> None:
    """Damaged with the same size and mtime (a bit flip on disk): the hash is checked on every serve."""
    import os

    from test_front_door import cache_files

    before = cache_files(engine)
    maps = {"frame": 1, "depth": client.upload_blob(depth_png(0.45)), "pose": None}
    job_id = client.submit(make_job(tiny_models, [maps], seed=9104))
    assert wait_for(client, job_id)["status"] == "done"
    client.fetch_frame(job_id, 1, str(tmp_path / "first.png"))
    [path] = cache_files(engine) - before
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    with pytest.raises(core.client.EngineError) as info:
        client.fetch_frame(job_id, 1, str(tmp_path / "second.png"))
    assert info.value.code == "frame_damaged" and not path.exists()


def test_a_data_folder_deleted_while_serving_is_made_again_or_reported(core: Any, tmp_path: Path) -> None:
    import shutil
    import sys

    from engine_testlib import ROOT

    data = tmp_path / "data"
    engine = core.process.LocalEngine(sys.executable, extension_dir=ROOT, data_dir=str(data),
                                      log_path=tmp_path / "engine.log", device="cpu", startup_timeout=120,
                                      env={"HF_HUB_OFFLINE": "1"})
    engine.start()
    try:
        client = engine.client(timeout=10)
        client.upload_blob(b"first")
        shutil.rmtree(data)
        sha = client.upload_blob(b"second")  # the folder is made again, the upload goes in
        assert client.has_blob(sha) and client.health()["status"] == "ok"
        shutil.rmtree(data)
        data.write_bytes(b"not a folder")  # now it cannot be made: /health says so
        answer = requests.get(engine.url + "/health", timeout=10)
        assert answer.status_code == 503 and answer.json()["status"] == "unhealthy"
        assert answer.json()["error"]["code"] == "storage_error"
    finally:
        engine.stop()


def test_the_queue_takes_turns_between_tokens() -> None:
    from engine.jobs.fair_queue import FairQueue

    queue = FairQueue()
    for n in range(1, 6):
        queue.put(f"a{n}", "alice")  # 640 frames' worth, submitted first
    queue.put("b1", "bob")
    queue.put("c1", "carol")
    queue.put("b2", "bob")
    assert [queue.get() for _ in range(8)] == ["a1", "b1", "c1", "a2", "b2", "a3", "a4", "a5"]
    queue.put("a6", "alice")
    queue.put(None)  # stop comes first
    assert queue.get() is None and queue.get() == "a6" and queue.qsize() == 0


def test_the_engines_worker_takes_turns_between_tokens(tmp_path: Path) -> None:
    """The queue above is the one the job manager's worker takes jobs from, in the turns it gives
    (a FIFO there ran alice's five jobs before bob's and carol's first)."""
    from types import SimpleNamespace

    from engine.jobs.manager import JobManager
    from engine.storage import Storage

    ran: list[str] = []
    all_ran = threading.Event()

    class Recording:  # an executor that runs nothing: it records the order jobs reach it
        interleave = False

        def dispatch(self, work: Any) -> None:
            work()

        def run(self, context: Any, group: list[Any]) -> None:
            ran.append(group[0].id)
            group[0].status = "done"
            if len(ran) == 8:
                all_ran.set()

        def resolve_device(self, requested: str, default_device: str) -> str:
            return "cpu"

        def stop(self) -> None:
            pass

    manager = JobManager(Storage(tmp_path), default_device="cpu", executor=Recording())
    manager.pin_blobs = lambda: None  # type: ignore[method-assign]  # the stand-in jobs name no blobs
    for job_id, owner in [(f"a{n}", "alice") for n in range(1, 6)] + [("b1", "bob"), ("c1", "carol"),
                                                                       ("b2", "bob")]:
        manager._register(SimpleNamespace(id=job_id, status="queued", created=time.time(), done={}, cached=[],
                                          cancel_event=threading.Event(),
                                          frame_keys={1: f"{job_id:0<64}"},
                                          request=SimpleNamespace(shot=job_id, generator="IMAGE")), owner)
    manager.start()
    try:
        assert all_ran.wait(10), ran
    finally:
        manager.stop()
    assert ran == ["a1", "b1", "c1", "a2", "b2", "a3", "a4", "a5"]


def test_cheap_submits_of_one_token_never_push_out_anothers_finished_job(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from engine.jobs.manager import JobManager
    from engine.storage import Storage

    class Request(SimpleNamespace):
        def model_copy(self, update: dict[str, Any]) -> Request:
            return Request(**{**vars(self), **update})

    manager = JobManager(Storage(tmp_path), default_device="cpu", max_jobs_kept=10)
    bobs = SimpleNamespace(id="bob-1", owner="bob", status="done", created=0.0,
                           request=Request(frames=list(range(5000)), prompt_keys=["k"], characters=[]))
    manager.jobs[bobs.id] = bobs
    for n in range(50):  # alice floods the table with fully cached (done) submits
        with manager._lock:
            manager._forget_old_jobs("alice")
            manager.jobs[f"alice-{n}"] = SimpleNamespace(id=f"alice-{n}", owner="alice", status="done",
                                                        created=1.0 + n, request=Request(frames=[1], prompt_keys=[],
                                                                                         characters=[]))
    assert "bob-1" in manager.jobs and len(manager.jobs) <= 10
    assert manager.jobs["bob-1"].request.frames == []  # finished jobs are kept small


def test_engine_paths_stay_out_of_the_messages_clients_read() -> None:
    from engine.contract.errors import without_paths

    assert without_paths("[Errno 2] No such file: '/root/.cache/viewfinder-engine/blobs/ab12'") == \
        "[Errno 2] No such file: '<path on the engine>'"
    assert "Users" not in without_paths(r"could not load C:\Users\me\models\x.safetensors")
    assert without_paths("frames[3].depth: a 1/2 ratio") == "frames[3].depth: a 1/2 ratio"
