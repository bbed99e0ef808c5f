"""Issue 11, a shared engine started from the command line as a studio would: a token per
person (jobs belong to whoever submitted them), TLS, an allow-list with Hub downloads off,
a bounded queue per token, temp files cleaned at start, the cache CLI; and the local
engine's private log folder, reported port and identity check."""

from __future__ import annotations

import contextlib
import http.server
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from engine_testlib import ROOT, depth_png, make_job, read_png

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef00"


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command line."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class Served:
    def __init__(self, process: subprocess.Popen[bytes], port: int, scheme: str, data_dir: Path, log: Path) -> None:
        self.process, self.port, self.scheme, self.data_dir, self.log = process, port, scheme, data_dir, log

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


def serve(tmp: Path, *args: str, scheme: str = "http", timeout: float = 120.0) -> Served:
    data_dir = tmp / "data"
    port_file = tmp / "port"
    log = tmp / "engine.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("VIEWFINDER_ENGINE_TOKEN", None)
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", "0", "--port-file",
                                    str(port_file), "--data-dir", str(data_dir), "--device", "cpu", *args],
                                   cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        if port_file.exists():
            return Served(process, int(port_file.read_text()), scheme, data_dir, log)
        time.sleep(0.1)
    process.kill()
    raise AssertionError("engine did not report its port: " + log.read_text())


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, str]) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("shared")
    tokens = tmp / "tokens"
    tokens.write_text(f"# a token per person\nalice:{ALICE}\nbob: {BOB}\n")
    tokens.chmod(0o600)
    allow = tmp / "allow"
    allow.write_text("\n".join([tiny_models["base"], tiny_models["depth"], tiny_models["pose"],
                                "h94/IP-Adapter/models/ip.safetensors"]) + "\n")
    cert, key = make_cert(tmp)
    # A crash left temp files behind: they are gone once the engine is up.
    for path in (tmp / "data" / "blobs" / ".tmp-orphan", tmp / "data" / "cache" / "ab" / ".tmp-orphan.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    served = serve(tmp, "--token-file", str(tokens), "--tls-cert", str(cert), "--tls-key", str(key),
                   "--allow-models", str(allow), "--no-hub", "--job-quota", "2", scheme="https")
    served.cert = cert  # type: ignore[attr-defined]
    wait_health(served)
    yield served
    os.environ.pop("REQUESTS_CA_BUNDLE", None)
    served.process.terminate()
    served.process.wait(timeout=30)


def wait_health(served: Served) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(served.url + "/health", verify=str(served.cert), timeout=2)  # type: ignore[attr-defined]
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise AssertionError(served.log.read_text())


def as_user(core: Any, served: Served, token: str) -> Any:
    os.environ["REQUESTS_CA_BUNDLE"] = str(served.cert)  # type: ignore[attr-defined]
    return core.client.EngineClient(served.url, token, timeout=30)


def test_tls_and_orphaned_temp_files(shared: Served) -> None:
    health = requests.get(shared.url + "/health", verify=str(shared.cert), timeout=10).json()  # type: ignore
    assert health["auth"] is True
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{shared.port}/health", timeout=10)  # no clear text on this port
    assert not list(shared.data_dir.rglob(".tmp-*"))


def test_jobs_belong_to_their_token_and_queues_are_bounded(core: Any, shared: Served,
                                                           tiny_models: dict[str, str], tmp_path: Path) -> None:
    alice, bob = as_user(core, shared, ALICE), as_user(core, shared, BOB)
    assert (alice.whoami()["owner"], bob.whoami()["owner"]) == ("alice", "bob")
    depth = alice.upload_blob(depth_png(0.3))
    job = make_job(tiny_models, [{"frame": 1, "depth": depth, "pose": None}], steps=2, seed=11)
    job_id = alice.submit(job)
    for call in (lambda: bob.status(job_id), lambda: bob.cancel(job_id),
                 lambda: bob.fetch_frame(job_id, 1, str(tmp_path / "stolen.png"))):
        with pytest.raises(core.client.EngineError) as info:
            call()
        assert (info.value.status, info.value.code) == (404, "unknown_job")
    deadline = time.monotonic() + 120
    while alice.status(job_id)["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert alice.status(job_id)["status"] == "done"
    alice.fetch_frame(job_id, 1, str(tmp_path / "mine.png"))
    assert read_png(tmp_path / "mine.png").shape == (64, 64, 3)
    assert not (tmp_path / "stolen.png").exists()
    # Bob's queue holds two jobs; the third waits for one of them. Alice is not affected.
    slow = make_job(tiny_models, [{"frame": n, "depth": depth, "pose": None} for n in range(1, 40)], steps=50)
    assert bob.limits()["job_quota"] == 2 and bob.limits()["jobs_active"] == 0
    first, second = bob.submit({**slow, "seed": 1}), bob.submit({**slow, "seed": 2})
    published = bob.limits()  # the contract's limits, and this token's share of its quota
    assert (published["job_quota"], published["jobs_active"], published["retry_after_s"]) == (2, 2, 1)
    assert (published["max_side"], published["max_json_bytes"], published["max_status_ids"]) == (4096, 8 << 20, 100)
    with pytest.raises(core.client.EngineError) as info:
        bob.submit({**slow, "seed": 3})
    # A quota refusal is a wait, in the HTTP way: 429 with Retry-After and the contract's JSON body.
    assert (info.value.status, info.value.code, info.value.retry_after) == (429, "queue_full", 1.0)
    assert info.value.quota_full and "Retry-After" in info.value.message
    refused = requests.post(shared.url + "/jobs", json={**slow, "seed": 3}, timeout=10, verify=str(shared.cert),
                            headers={"Authorization": f"Bearer {BOB}"})
    assert (refused.status_code, refused.headers.get("Retry-After")) == (429, "1")
    assert refused.json()["error"]["code"] == "queue_full"
    with pytest.raises(core.client.EngineError) as info:
        as_user(core, shared, "not-a-token").limits()
    assert info.value.status == 401  # the limits are published to token holders only
    assert alice.limits()["jobs_active"] == 0
    third = alice.submit({**slow, "seed": 4})
    for client, ids in ((bob, (first, second)), (alice, (third,))):
        for one in ids:
            client.cancel(one)


def test_allow_list_and_no_hub(core: Any, shared: Served, tiny_models: dict[str, str]) -> None:
    alice = as_user(core, shared, ALICE)
    for field, value in (("lora", tiny_models["lora"]), ("base", "stable-diffusion-v1-5/stable-diffusion-v1-5")):
        job = make_job(tiny_models, [{"frame": 1}])
        job["models"][field] = value
        with pytest.raises(core.client.EngineError) as info:
            alice.submit(job)
        assert (info.value.status, info.value.code, info.value.field) == (403, "model_not_allowed", f"models.{field}")
    # Every field that names weights to load goes through the list, and the answer is the same whether
    # the path exists on the engine machine or not (issue 22).
    depth = alice.upload_blob(depth_png(0.2))
    for exists in (tiny_models["lora"], "/no/such/dir/adapter.safetensors"):
        for where, body in (
                ("models.ip_adapter", {"models": {"ip_adapter": exists}, "style_reference": depth}),
                ("models.image_encoder", {"models": {"ip_adapter": "h94/IP-Adapter/models/ip.safetensors",
                                                     "image_encoder": exists}, "style_reference": depth}),
                ("finalize.upscaler", {"finalize": {"upscaler": exists, "detail_strength": 0.3}})):
            job = make_job(tiny_models, [{"frame": 1, "depth": depth, "pose": None, "source": depth}])
            for key, value in body.items():
                job[key] = {**job[key], **value} if isinstance(value, dict) and key in job else value
            with pytest.raises(core.client.EngineError) as info:
                alice.submit(job)
            assert (info.value.status, info.value.code, info.value.field) == (403, "model_not_allowed", where), \
                info.value.message


def test_remote_host_needs_tls_or_an_explicit_proxy_flag(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "engine", "serve", "--host", "0.0.0.0", "--token", "x" * 20,
                             "--data-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--tls-cert" in result.stderr and "--allow-plain-http" in result.stderr
    bad = tmp_path / "tokens"
    bad.write_text("alice:short\n")
    bad.chmod(0o600)
    result = subprocess.run([sys.executable, "-m", "engine", "serve", "--token-file", str(bad), "--data-dir",
                             str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "line 1" in result.stderr and "16 characters" in result.stderr
    # A token file others can read is refused, whatever it holds (issue 22).
    bad.write_text(f"alice:{ALICE}\n")
    bad.chmod(0o644)
    result = subprocess.run([sys.executable, "-m", "engine", "serve", "--token-file", str(bad), "--data-dir",
                             str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "chmod 600" in result.stderr and "644" in result.stderr


def test_cache_cli_verify_and_prune(tmp_path: Path) -> None:
    import hashlib

    data = tmp_path / "data"
    good = b"good blob"
    (data / "blobs").mkdir(parents=True)
    (data / "blobs" / hashlib.sha256(good).hexdigest()).write_bytes(good)
    (data / "blobs" / ("0" * 64)).write_bytes(b"damaged")
    (data / "cache" / "ab").mkdir(parents=True)
    frame = depth_png(0.5)
    for n in range(4):
        path = data / "cache" / "ab" / f"ab{n:062d}.png"
        path.write_bytes(frame)
        os.utime(path, (1000 + n, 1000 + n))  # frame 0 least recently used
    (data / "cache" / "ab" / ("ab" + "9" * 62 + ".png")).write_bytes(frame[: len(frame) // 2])

    def cli(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "engine", "cache", *args, "--data-dir", str(data)], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "2 damaged removed" in cli("verify")
    assert sorted(p.name[:4] for p in (data / "cache" / "ab").iterdir()) == ["ab00"] * 4
    out = cli("prune", "--quota", str(2 * len(frame) + len(good)))
    assert "2 evicted" in out
    left = sorted(p.name for p in (data / "cache" / "ab").iterdir())
    assert left == [f"ab{n:062d}.png" for n in (2, 3)]


# 6. The local engine ----------------------------------------------------------------------------


def test_local_engine_log_is_private_and_port_reported(core: Any, tmp_path: Path) -> None:
    local = core.process.LocalEngine(sys.executable, extension_dir=ROOT, data_dir=str(tmp_path / "d"),
                                     device="cpu", startup_timeout=120, env={"HF_HUB_OFFLINE": "1"})
    try:
        client = local.start()
        folder = local.log_path.parent
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(local.log_path.stat().st_mode) == 0o600
        assert folder.name.startswith("viewfinder-engine-")  # a fresh mkdtemp folder, not a fixed name
        assert client.whoami()["owner"] == "default"
        assert [p.suffix for p in folder.iterdir() if p.suffix == ".port"] == [".port"]
    finally:
        local.stop()


class _Canned(http.server.BaseHTTPRequestHandler):
    """A stand-in HTTP server's handler: ``answer`` sends a status and a body, quietly."""

    def answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stand-in server on a free local port, for as long as the block runs; its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


class _Impostor(_Canned):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            self.answer(200, b'{"status": "ok"}')
        else:
            self.answer(401, b'{"error": {"code": "unauthorized"}}')


def test_another_program_on_the_port_is_not_taken_for_our_engine(core: Any) -> None:
    with serving(_Impostor) as url:
        local = core.process.LocalEngine(sys.executable)
        local.port = int(url.rsplit(":", 1)[1])
        with pytest.raises(core.client.EngineError) as info:
            local._check_identity(core.client.EngineClient(local.url, local.token, timeout=5))
        assert info.value.code == "not_our_engine" and "not the engine Viewfinder started" in info.value.message


class _Truncating(_Canned):
    def do_GET(self) -> None:  # noqa: N802
        self.answer(200, depth_png(0.2)[:200])


def test_client_never_saves_a_frame_it_cannot_open(core: Any, tmp_path: Path) -> None:
    with serving(_Truncating) as url:
        client = core.client.EngineClient(url, "t")
        with pytest.raises(core.client.EngineError) as info:
            client.fetch_frame("job", 1, str(tmp_path / "0001.png"))
        assert info.value.code == "damaged_frame" and "truncated" in info.value.message
        assert list(tmp_path.iterdir()) == []


def test_statuses_of_many_jobs_in_one_request(core: Any, shared: Served, tiny_models: dict[str, str]) -> None:
    """GET /jobs?ids=: the add-on's one poll a round for every shot in flight. Only the token's own
    jobs are answered; the others are 'unknown', exactly as GET /jobs/{id} would say."""
    alice, bob = as_user(core, shared, ALICE), as_user(core, shared, BOB)
    depth = alice.upload_blob(depth_png(0.4))
    first = alice.submit(make_job(tiny_models, [{"frame": 1, "depth": depth, "pose": None}], steps=2, seed=21))
    second = alice.submit(make_job(tiny_models, [{"frame": 1, "depth": depth, "pose": None}], steps=2, seed=22))
    deadline = time.monotonic() + 120
    while {alice.status(j)["status"] for j in (first, second)} != {"done"}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    found = alice.statuses([first, second, first])
    assert sorted(found) == sorted([first, second])
    for job_id in (first, second):
        assert found[job_id] == alice.status(job_id)
    assert bob.statuses([first, second]) == {}  # Alice's jobs are not Bob's to see
    answer = requests.get(shared.url + "/jobs", params={"ids": f"{first},nope"}, verify=str(shared.cert),  # type: ignore
                          headers={"Authorization": f"Bearer {ALICE}"}, timeout=10).json()
    assert list(answer["jobs"]) == [first] and answer["unknown"] == ["nope"]
    too_many = requests.get(shared.url + "/jobs", params={"ids": ",".join(f"j{i}" for i in range(101))},
                            verify=str(shared.cert), headers={"Authorization": f"Bearer {ALICE}"},  # type: ignore
                            timeout=10)
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "too_many_ids"
    # The client asks in chunks of 100, so a longer list still comes back whole.
    assert sorted(alice.statuses([first, second] + [f"gone{i}" for i in range(150)])) == sorted([first, second])
    unauthenticated = requests.get(shared.url + "/jobs", params={"ids": first}, verify=str(shared.cert),  # type: ignore
                                   timeout=10)
    assert unauthenticated.status_code == 401


class _OlderEngine(_Canned):
    """An engine from before GET /jobs?ids=: only POST /jobs exists at /jobs."""

    asked: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        self.asked.append(self.path)
        self.answer(405, b'{"detail": "Method Not Allowed"}')


def test_statuses_from_an_older_engine_falls_back_to_one_poll_per_job(core: Any) -> None:
    with serving(_OlderEngine) as url:
        client = core.client.EngineClient(url, "t")
        assert client.statuses(["a", "b"]) is None
        assert client.statuses(["a", "b"]) is None  # remembered: asked once only
        assert _OlderEngine.asked == ["/jobs?ids=a%2Cb"]


@pytest.mark.parametrize("command", ["serve", "serve-ray"])
def test_a_token_that_starts_with_a_dash_is_taken_as_a_value(command: str) -> None:
    """secrets.token_urlsafe starts a token with '-' one time in 64: ``--token=SECRET`` takes it (the
    help says so), and the token files' suggestion is hex, which never does. The Ray test engine
    passed ``--token SECRET`` and failed one run in 64 with "expected one argument"."""
    from engine.api.cli import build_parser

    token = "-" + "k" * 23
    args = build_parser().parse_args([command, f"--token={token}"])
    assert args.token == token
    assert "--token=SECRET" in build_parser()._subparsers._group_actions[0].choices[command].format_help()
