"""Issue 11 on the session's engine process: the token before the body, body limits, the
Host check, request limits, map sizes before decoding, and a cache that never serves a
broken frame. Every request goes over real HTTP (raw sockets where a client library
would refuse to send what an attacker sends)."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from engine_testlib import SIZE, depth_png, make_job, pose_png, read_png, wait_for
from PIL import Image


def raw_request(port: int, head: str, body: bytes = b"", timeout: float = 30.0) -> tuple[int, bytes]:
    """Send raw HTTP/1.1 and return (status, body); the server may answer before the body is sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head.encode("latin-1") + body)
        except OSError:
            pass  # the engine answered and closed before taking the body: read its answer
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def upload(client: Any, data: bytes) -> str:
    return client.upload_blob(data)


@pytest.fixture()
def port(engine: Any) -> int:
    return int(engine.port)


# 1. The token before the body; every body bounded ------------------------------------------------


def test_no_token_is_refused_before_a_huge_body_is_read(engine: Any, port: int) -> None:
    before = rss_kb(engine.process.pid)
    # Claims 96 MB and sends 1 MB of it: the answer comes without the rest being read.
    head = (f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {96 * 1024 * 1024}\r\n\r\n")
    status, body = raw_request(port, head, b"[" * 65536)
    assert status == 401 and b'"unauthorized"' in body
    # A wrong token is the same; so is a missing one on every other endpoint.
    status, _ = raw_request(port, head.replace("\r\n\r\n", "\r\nAuthorization: Bearer nope\r\n\r\n"))
    assert status == 401
    for method, path in (("PUT", "/blobs/" + "a" * 64), ("GET", "/jobs/x"), ("GET", "/docs"),
                         ("GET", "/openapi.json")):
        status, _ = raw_request(port, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
        assert status == 401, (method, path)
    assert rss_kb(engine.process.pid) - before < 50 * 1024  # nothing of the body was kept


def test_bodies_past_their_limit_are_refused_with_413(engine: Any, client: Any, port: int) -> None:
    auth = f"Authorization: Bearer {engine.token}\r\n"
    # Declared too large: refused at the header.
    status, body = raw_request(port, f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
                               f"Content-Length: {9 * 1024 * 1024}\r\n\r\n")
    assert status == 413 and b'"body_too_large"' in body
    status, body = raw_request(port, f"PUT /blobs/{'b' * 64} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
                               f"Content-Length: {200 * 1024 * 1024}\r\n\r\n")
    assert status == 413 and b'"body_too_large"' in body

    # Streamed (chunked, no length) past the limit: refused while streaming, no file left behind.
    def chunks(total: int):
        for _ in range(total // 65536):
            yield b"\0" * 65536

    response = requests.put(f"{engine.url}/blobs/{'c' * 64}", data=chunks(140 * 1024 * 1024),
                            headers={"Authorization": f"Bearer {engine.token}"}, timeout=120)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    response = requests.post(f"{engine.url}/jobs", data=chunks(9 * 1024 * 1024),
                             headers={"Authorization": f"Bearer {engine.token}", "Content-Type": "application/json"},
                             timeout=120)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    blobs = Path(engine.data_dir) / "blobs"
    assert not (blobs / ("c" * 64)).exists()
    assert not [p for p in blobs.iterdir() if p.name.startswith(".tmp-")]
    # A blob within the limit still goes in, hashed while it streamed.
    assert client.has_blob(upload(client, b"small blob"))


def test_blob_ids_are_validated_on_head_and_put(engine: Any, port: int) -> None:
    auth = {"Authorization": f"Bearer {engine.token}"}
    for bad in ("x" * 5000, "..%2F..%2Fetc", "A" * 64):
        response = requests.head(f"{engine.url}/blobs/{bad}", headers=auth, timeout=10)
        assert response.status_code in (400, 404) and response.status_code != 500, bad
    assert requests.head(f"{engine.url}/blobs/{'x' * 5000}", headers=auth, timeout=10).status_code == 400
    response = requests.put(f"{engine.url}/blobs/{'x' * 5000}", data=b"1", headers=auth, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["field"] == "sha256"


def test_host_header_is_checked_on_a_loopback_engine(engine: Any, port: int) -> None:
    for host in ("evil.example", "evil.example:80", f"192.168.1.5:{port}"):
        status, body = raw_request(port, f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n")
        assert status == 421 and b'"bad_host"' in body, host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]"):
        status, _ = raw_request(port, f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n")
        assert status == 200, host


def test_docs_and_openapi_are_off(engine: Any) -> None:
    auth = {"Authorization": f"Bearer {engine.token}"}
    for path in ("/docs", "/redoc", "/openapi.json"):
        response = requests.get(engine.url + path, headers=auth, timeout=10)
        assert response.status_code == 404 and response.json()["error"]["code"] == "http_error"


# 3, 4. Limits, and map sizes checked before decoding -----------------------------------------


def submit_error(core: Any, client: Any, job: dict[str, Any]) -> Any:
    with pytest.raises(core.client.EngineError) as info:
        client.submit(job)
    return info.value


@pytest.mark.parametrize("override, field", [
    ({"steps": 151}, "steps"),
    ({"width": 4096, "height": 4096, "batch_size": 2}, "batch_size"),
    ({"prompt": "x" * 4001}, "prompt"),
    ({"negative_prompt": "x" * 4001}, "negative_prompt"),
    ({"shot": "s" * 201}, "shot"),
])
def test_limits_name_the_field(core: Any, client: Any, tiny_models: dict[str, str], override: dict[str, Any],
                               field: str) -> None:
    job = make_job(tiny_models, [{"frame": 1, "depth": None, "pose": None}], **override)
    error = submit_error(core, client, job)
    assert (error.status, error.code, error.field) == (400, "limit_exceeded", field)
    assert field in error.message


def test_too_many_frames_with_a_long_prompt_is_refused_fast(core: Any, client: Any,
                                                            tiny_models: dict[str, str]) -> None:
    frames = [{"frame": n} for n in range(20_000)]
    error = submit_error(core, client, make_job(tiny_models, frames, prompt="p" * 65536))
    assert error.code in ("limit_exceeded", "body_too_large")
    error = submit_error(core, client, make_job(tiny_models, frames, prompt="p"))
    assert (error.code, error.field) == ("limit_exceeded", "frames") and "10000" in error.message


def test_many_frames_with_a_long_prompt_are_keyed_once(client: Any, tiny_models: dict[str, str]) -> None:
    """10,000 frames and a 4,000-character prompt: accepted (the prompt is hashed once), then cancelled."""
    frames = [{"frame": n} for n in range(10_000)]
    answer = client.submit_full(make_job(tiny_models, frames, prompt="p" * 4000, steps=1, seed=777))
    assert answer["frames_total"] == 10_000
    assert client.cancel(answer["id"])["status"] in ("cancelled", "running")
    assert wait_for(client, answer["id"])["status"] == "cancelled"


def png_of(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_map_size_is_checked_before_decoding(core: Any, client: Any, tiny_models: dict[str, str]) -> None:
    # A small file that would decode to 8000 x 8000: refused from its header.
    bomb = png_of(np.zeros((8000, 8000), np.uint8))
    assert len(bomb) < 200_000
    job = make_job(tiny_models, [{"frame": 1, "depth": upload(client, bomb), "pose": None}])
    error = submit_error(core, client, job)
    assert (error.status, error.code, error.field) == (400, "map_size_mismatch", "frames[0].depth")
    assert "8000x8000" in error.message and f"{SIZE}x{SIZE}" in error.message
    job = make_job(tiny_models, [{"frame": 1, "depth": upload(client, depth_png(0.0)),
                                  "pose": upload(client, pose_png(0, size=SIZE * 2))}])
    error = submit_error(core, client, job)
    assert (error.code, error.field) == ("map_size_mismatch", "frames[0].pose")
    job = make_job(tiny_models, [{"frame": 1, "depth": upload(client, b"not a png at all"), "pose": None}])
    assert (submit_error(core, client, job).code) == "bad_map"


def test_flow_maps_only_as_npy_of_the_job_size(core: Any, client: Any, tiny_models: dict[str, str]) -> None:
    depth = upload(client, depth_png(0.0))

    def flow_job(flow: bytes) -> dict[str, Any]:
        frames = [{"frame": 1, "depth": depth, "pose": None},
                  {"frame": 2, "depth": depth, "pose": None, "flow": upload(client, flow)}]
        return make_job(tiny_models, frames, coherence={"mode": "FLOW"})

    buf = io.BytesIO()
    np.savez_compressed(buf, flow=np.zeros((4096, 4096, 2), np.float32))  # 0.1 MB -> 128 MB unpacked
    error = submit_error(core, client, flow_job(buf.getvalue()))
    assert (error.code, error.field) == ("bad_map", "frames[1].flow") and ".npz" in error.message
    buf = io.BytesIO()
    np.save(buf, np.zeros((SIZE * 2, SIZE * 2, 2), np.float32))
    error = submit_error(core, client, flow_job(buf.getvalue()))
    assert (error.code, error.field) == ("map_size_mismatch", "frames[1].flow")


# 2. A damaged cached frame or blob is never trusted -----------------------------------------------


def cache_files(engine: Any) -> set[Path]:
    return {p for p in (Path(engine.data_dir) / "cache").glob("*/*.png")}


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip"])
def test_damaged_cached_frame_is_generated_again(client: Any, engine: Any, tiny_models: dict[str, str],
                                                 tmp_path: Path, damage: str) -> None:
    seed = {"truncate": 9001, "empty": 9002, "flip": 9003}[damage]
    maps = {"frame": 1, "depth": upload(client, depth_png(0.1)), "pose": upload(client, pose_png(1))}
    before = cache_files(engine)
    job_id = client.submit(make_job(tiny_models, [maps], seed=seed))
    assert wait_for(client, job_id)["status"] == "done"
    client.fetch_frame(job_id, 1, str(tmp_path / "first.png"))
    [path] = cache_files(engine) - before
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(flipped))
    # The finished job no longer serves it ...
    with pytest.raises(Exception) as info:
        client.fetch_frame(job_id, 1, str(tmp_path / "broken.png"))
    assert getattr(info.value, "code", "") == "frame_damaged"
    assert not (tmp_path / "broken.png").exists()
    # ... and the same request makes it again, identical to the first.
    answer = client.submit_full(make_job(tiny_models, [maps], seed=seed))
    assert answer["cached_frames"] == []
    assert wait_for(client, answer["id"])["status"] == "done"
    client.fetch_frame(answer["id"], 1, str(tmp_path / "again.png"))
    assert np.array_equal(read_png(tmp_path / "first.png"), read_png(tmp_path / "again.png"))


def test_damaged_blob_is_deleted_and_reported(client: Any, engine: Any, tiny_models: dict[str, str]) -> None:
    depth = depth_png(0.77)
    sha = upload(client, depth)
    blob = Path(engine.data_dir) / "blobs" / sha
    blob.write_bytes(depth[:-10] + b"0123456789")  # same size, other bytes
    job_id = client.submit(make_job(tiny_models, [{"frame": 1, "depth": sha, "pose": None}], seed=31337))
    status = wait_for(client, job_id)
    assert status["status"] == "failed" and status["error"]["code"] == "damaged_blob", status
    assert not client.has_blob(sha)
    assert upload(client, depth) == sha  # the add-on uploads it again, and the job runs
    assert wait_for(client, client.submit(make_job(tiny_models, [{"frame": 1, "depth": sha, "pose": None}],
                                                   seed=31337)))["status"] == "done"


# 4. Cancel within one step, with the step time in the status ---------------------------------------


def test_cancel_stops_within_one_step_and_status_says_the_step_time(client: Any,
                                                                    tiny_models: dict[str, str]) -> None:
    job = make_job(tiny_models, [{"frame": 1}], steps=150, width=256, height=256, seed=4242, batch_size=1)
    job_id = client.submit(job)
    status = wait_for(client, job_id, until=("running",))
    deadline = time.monotonic() + 120
    while status["step"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        status = client.status(job_id)
    assert isinstance(status["step_s"], float) and status["step_s"] > 0
    at_cancel = client.cancel(job_id)["step"]
    final = wait_for(client, job_id)
    assert final["status"] == "cancelled" and final["frames"] == []
    assert final["step"] <= at_cancel + 1 < 150


# 7. Robustness ------------------------------------------------------------------------------------


def test_newline_in_a_shot_name_cannot_forge_a_log_line(client: Any, engine: Any,
                                                        tiny_models: dict[str, str]) -> None:
    forged = "x\n2099-01-01 00:00:00,000 WARNING engine: FORGED LINE"
    job_id = client.submit(make_job(tiny_models, [{"frame": 1}], shot=forged, steps=1, seed=5150))
    assert wait_for(client, job_id)["status"] == "done"
    lines = Path(engine.log_path).read_text(errors="replace").splitlines()
    assert any("FORGED LINE" in line for line in lines)
    assert not any(line.startswith("2099-01-01") for line in lines)


def test_unexpected_errors_answer_json(tmp_path: Path) -> None:
    """In process: an OSError deep in a handler becomes a JSON error naming the problem."""
    import asyncio
    import errno

    from engine.api.auth import Tokens
    from engine.api.front_door import FrontDoor

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    door = FrontDoor(failing, Tokens.single(None), json_limit=10, blob_limit=10)
    scope = {"type": "http", "method": "GET", "path": "/x", "headers": [(b"host", b"127.0.0.1")]}
    asyncio.run(door(scope, receive, send))
    assert sent[0]["status"] == 507
    assert b'"disk_full"' in sent[1]["body"] and b"Traceback" not in sent[1]["body"]


# 5. Errors do not tell whether a path exists ------------------------------------------------------


def test_model_errors_do_not_reveal_the_engine_disk(core: Any, client: Any, tiny_models: dict[str, str],
                                                    tmp_path: Path) -> None:
    existing_file = tmp_path / "notes.txt"
    existing_file.write_text("x")
    empty_folder = tmp_path / "folder"
    empty_folder.mkdir()
    messages = set()
    for value in (str(existing_file), str(empty_folder), str(tmp_path / "missing"), "/etc"):
        job = make_job(tiny_models, [{"frame": 1}])
        job["models"]["controlnet_depth"] = value
        error = submit_error(core, client, job)
        assert (error.code, error.field) == ("model_unavailable", "models.controlnet_depth")
        messages.add(error.message.replace(value, "<path>"))
    assert len(messages) == 1, messages
    assert "not a usable model" in messages.pop()


# 9. Code in model folders ------------------------------------------------------------------------


@pytest.mark.parametrize("plant", ["py", "custom_pipeline", "auto_map"])
def test_model_folder_with_code_is_refused(core: Any, client: Any, tiny_models: dict[str, str], tmp_path: Path,
                                           plant: str) -> None:
    import json
    import shutil

    folder = tmp_path / "net"
    shutil.copytree(tiny_models["depth"], folder)
    if plant == "py":
        (folder / "modeling_evil.py").write_text("import os\n")
    elif plant == "auto_map":
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModel": "modeling_evil.Evil"}
        (folder / "config.json").write_text(json.dumps(config))
    job = make_job(tiny_models, [{"frame": 1}])
    if plant == "custom_pipeline":
        base = tmp_path / "base"
        shutil.copytree(tiny_models["base"], base)
        index = json.loads((base / "model_index.json").read_text())
        index["unet"] = ["evil_module", "EvilUNet"]
        (base / "model_index.json").write_text(json.dumps(index))
        job["models"]["base"] = str(base)
        field = "models.base"
    else:
        job["models"]["controlnet_depth"] = str(folder)
        field = "models.controlnet_depth"
    error = submit_error(core, client, job)
    assert (error.status, error.code, error.field) == (400, "unsafe_model_code", field)
