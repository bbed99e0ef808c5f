"""Front-door load benchmark (issue 11): attackers and valid jobs at once, on loopback.

Protocol
1. Write tiny random-weight models; start a real engine through ``core/client/process.py``.
2. After a warm-up job (loads the models; not measured), at the same time, for ``--seconds`` at most:
   - ``--attackers`` threads each send ``--requests`` unauthenticated ``POST /jobs`` that
     declare a 96 MB body and send the first 64 kB of it, and as many authenticated ones
     that declare 9 MB (over the JSON limit) — raw sockets, as an attacker would;
   - ``--jobs`` valid jobs (2 frames each, tiny models) are submitted and polled;
   - one thread asks ``GET /health`` every 20 ms and keeps the slowest answer;
   - one thread samples the engine's resident memory (``/proc/<pid>/status``) every 50 ms.
3. Every valid job must finish with frames that open as PNGs of the job's size.
Figures: requests sent, answers by status, largest RSS seen (and its growth over the
start), slowest and median ``/health``, jobs done.

    .venv-engine/bin/python benchmarks/bench_front_door.py
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, load_core, make_tiny_models, model_paths, png  # noqa: E402


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _attack(port: int, token: str | None, declared: int, sent_body: int) -> int:
    head = f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    head += f"Content-Length: {declared}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(head.encode() + b"[" * sent_body)
        except OSError:
            pass
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]) if data else 0


def run_load(client: Any, port: int, token: str, pid: int, models: dict[str, str], *, attackers: int = 4,
             requests_each: int = 25, jobs: int = 3, seconds: float = 120.0, size: int = 64) -> dict[str, Any]:
    """Attack and serve at once; returns the figures (see the module's docstring).

    A warm-up job loads the models first (not measured): a shared engine under attack
    has its models loaded, and loading them is a one-off cost of its own.
    """
    y = np.linspace(0, 65535, size, dtype=np.float32)[:, None].repeat(size, 1)

    def job_body(j: int, depth: str) -> dict[str, Any]:
        return {"shot": f"load {j}", "prompt": "a street", "seed": 1000 + j, "steps": 2, "width": size,
                "height": size, "batch_size": 2, "device": "cpu",
                "models": {"base": models["base"], "controlnet_depth": models["depth"], "controlnet_pose": None},
                "frames": [{"frame": f, "depth": depth} for f in (1, 2)]}

    warm = client.submit(job_body(-1, client.upload_blob(png(y.astype(np.uint16)))))
    warm_deadline = time.monotonic() + seconds
    while client.status(warm)["status"] not in ("done", "failed", "cancelled") and time.monotonic() < warm_deadline:
        time.sleep(0.1)
    stop = threading.Event()
    health_s: list[float] = []
    health_errors: list[str] = []
    peak = [rss_kb(pid)]
    start_rss = peak[0]
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def watch_health() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                client.health()
                health_s.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - counted, reported
                health_errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.02)

    def watch_memory() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kb(pid))
            time.sleep(0.05)

    def attack(index: int) -> None:
        for n in range(requests_each):
            if stop.is_set():
                return
            authed = n % 2 == 1
            status = _attack(port, token if authed else None, 9 * 1024 * 1024 if authed else 96 * 1024 * 1024,
                             65536)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

    watchers = [threading.Thread(target=watch_health, daemon=True), threading.Thread(target=watch_memory, daemon=True)]
    for thread in watchers:
        thread.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=attack, args=(i,), daemon=True) for i in range(attackers)]
    for thread in threads:
        thread.start()
    # Valid jobs alongside.
    job_ids = []
    for j in range(jobs):
        depth = client.upload_blob(png(np.roll(y, 7 * j + 1, axis=1).astype(np.uint16)))
        job_ids.append(client.submit(job_body(j, depth)))
    done: dict[str, str] = {}
    frames_ok = 0
    deadline = time.monotonic() + seconds
    while len(done) < len(job_ids) and time.monotonic() < deadline:
        for job_id in job_ids:
            if job_id not in done:
                state = client.status(job_id)["status"]
                if state in ("done", "failed", "cancelled"):
                    done[job_id] = state
        time.sleep(0.1)
    for thread in threads:
        thread.join(timeout=max(1.0, deadline - time.monotonic()))
    stop.set()
    for thread in watchers:
        thread.join(timeout=5)
    with tempfile.TemporaryDirectory() as tmp:
        for job_id, state in done.items():
            if state != "done":
                continue
            for frame in (1, 2):
                path = Path(tmp) / f"{job_id}-{frame}.png"
                client.fetch_frame(job_id, frame, str(path))
                with Image.open(path) as img:
                    img.load()
                    frames_ok += img.size == (size, size)
    return {
        "requests_sent": sum(statuses.values()), "answers": {str(k): v for k, v in sorted(statuses.items())},
        "rss_start_mb": round(start_rss / 1024, 1), "rss_peak_mb": round(peak[0] / 1024, 1),
        "rss_growth_mb": round((peak[0] - start_rss) / 1024, 1),
        "health_checks": len(health_s), "health_errors": health_errors[:5],
        "health_slowest_ms": round(max(health_s, default=0.0) * 1000, 1),
        "health_median_ms": round(statistics.median(health_s) * 1000, 1) if health_s else None,
        "jobs": len(job_ids), "jobs_done": sum(1 for s in done.values() if s == "done"),
        "frames_ok": frames_ok, "wall_s": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attackers", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="requests per attacker thread")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args()
    client_mod, process_mod = load_core("vf_core_bench_fd")
    with tempfile.TemporaryDirectory() as tmp:
        models = model_paths(make_tiny_models(f"{tmp}/models"), "base", "depth")
        engine = process_mod.LocalEngine(sys.executable, extension_dir=ROOT, data_dir=f"{tmp}/data", device="cpu",
                                         env={"HF_HUB_OFFLINE": "1"})
        client = engine.start()
        try:
            figures = run_load(client, int(engine.port), engine.token, engine.process.pid, models,
                               attackers=args.attackers, requests_each=args.requests, jobs=args.jobs,
                               seconds=args.seconds)
        finally:
            engine.stop()
    print(json.dumps(figures, indent=2))
    return 0 if figures["jobs_done"] == figures["jobs"] else 1


if __name__ == "__main__":
    sys.exit(main())
