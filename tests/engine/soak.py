"""The soak (issue 22): several tokens submit, cancel and resubmit shots against one engine for a
while, as the engine is killed with -9 and started again once, a cached frame is damaged on disk,
and the cache quota is hit. At the end every take that reports complete decodes, no job hangs,
and the engine's RSS is flat. Loopback only, tiny models, bounded in time and in count.

Short form in `make test` (tests/engine/test_soak.py, about a minute); long form:
    .venv-engine/bin/python benchmarks/bench_soak.py --seconds 600
"""

from __future__ import annotations

import io
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine_testlib import depth_png, make_job
from PIL import Image
from test_shared_engine import Served, serve

TOKENS = {"alice": "alice-soak-token-0123456789", "bob": "bob-soak-token-0123456789ab",
          "carol": "carol-soak-token-0123456789a"}
HANG_S = 120.0  # a job that neither ends nor moves for this long hangs


@dataclass
class Counts:
    requests: int = 0
    jobs: int = 0
    cancelled: int = 0
    kills_survived: int = 0
    damaged: int = 0
    quota_hits: int = 0
    frames_checked: int = 0
    frames_lost: int = 0
    hung: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def line(self) -> str:
        return (f"requests {self.requests}, jobs {self.jobs} ({self.cancelled} cancelled), kills survived "
                f"{self.kills_survived}, cache files damaged {self.damaged}, quota hits {self.quota_hits}, frames "
                f"checked {self.frames_checked}, frames lost {self.frames_lost} (goal 0), jobs hung {self.hung}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Soak:
    def __init__(self, core: Any, tiny_models: dict[str, str], folder: Path, seconds: float,
                 cache_quota: str = "2M") -> None:
        self.core, self.models, self.folder, self.seconds = core, tiny_models, folder, seconds
        self.cache_quota = cache_quota
        self.counts = Counts()
        self.served: Served | None = None
        self.url = ""
        self.up = threading.Event()
        self.stop = threading.Event()
        self.rss: list[float] = []

    # The engine -----------------------------------------------------------------------

    def start_engine(self) -> None:
        tokens = self.folder / "tokens"
        tokens.write_text("".join(f"{name}:{token}\n" for name, token in TOKENS.items()))
        tokens.chmod(0o600)
        (self.folder / "port").unlink(missing_ok=True)
        self.served = serve(self.folder, "--token-file", str(tokens), "--cache-quota", self.cache_quota,
                            "--job-quota", "3")
        self.url = self.served.url
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.core.client.EngineClient(self.url, TOKENS["alice"], timeout=2).health()
                self.up.set()
                return
            except self.core.client.EngineError:
                time.sleep(0.2)
        raise AssertionError("the engine did not come up: " + self.served.log.read_text()[-2000:])

    def chaos(self) -> None:
        """Once frames flow: kill -9 and restart; once they flow again, damage a cached frame,
        then fill the cache to its quota."""
        assert self.served is not None
        deadline = time.monotonic() + self.seconds
        self._frames_at_least(2, deadline)
        self.rss.append(rss_mb(self.served.process.pid))
        self.up.clear()
        self.served.process.kill()
        self.served.process.wait(timeout=30)
        self.start_engine()
        self.counts.add(kills_survived=1)
        self._frames_at_least(self.counts.frames_checked + 2, deadline)
        frames = sorted((self.folder / "data" / "cache").rglob("*.png"))
        if frames:
            victim = random.Random(7).choice(frames)
            data = bytearray(victim.read_bytes())
            data[len(data) // 2] ^= 0xFF
            victim.write_bytes(bytes(data))
            self.counts.add(damaged=1)
        filler = self.core.client.EngineClient(self.url, TOKENS["carol"], timeout=10)
        for _ in range(40):  # the quota is hit: refused (507), not written past it
            try:
                filler.upload_blob(random.randbytes(200_000))
                self.counts.add(requests=1)
            except self.core.client.EngineError as exc:
                self.counts.add(requests=1)
                if exc.status == 507:
                    self.counts.add(quota_hits=1)
                    break
        self._frames_at_least(self.counts.frames_checked + 2, deadline)
        self.rss.append(rss_mb(self.served.process.pid))  # the restarted engine, warm

    def _frames_at_least(self, count: int, deadline: float) -> None:
        while self.counts.frames_checked < count and time.monotonic() < deadline:
            time.sleep(0.2)

    # The artists ------------------------------------------------------------------------

    def artist(self, name: str, seed: int) -> None:
        rng = random.Random(seed)
        client_cls, error_cls = self.core.client.EngineClient, self.core.client.EngineError
        pool: list[bytes] = [depth_png(rng.random()) for _ in range(4)]
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline and not self.stop.is_set():
            if not self.up.wait(60):  # the engine is being restarted
                continue
            client = client_cls(self.url, TOKENS[name], timeout=10)
            fresh = rng.random() < 0.3  # a new map now and then: the cache quota fills
            maps = [depth_png(rng.random()) if fresh else rng.choice(pool) for _ in range(2)]
            try:
                shas = [client.upload_blob(m) for m in maps]
                self.counts.add(requests=2)
                job = make_job(self.models, [{"frame": k + 1, "depth": s, "pose": None} for k, s in enumerate(shas)],
                               steps=2, batch_size=2, seed=rng.randrange(6))
                job_id = client.submit(job)
                self.counts.add(requests=1, jobs=1)
                if rng.random() < 0.25:
                    client.cancel(job_id)
                    self.counts.add(requests=1, cancelled=1)
                self.follow(client, job_id, name)
            except error_cls as exc:
                self.counts.add(requests=1)
                if exc.status in (429, 507):
                    self.counts.add(quota_hits=1)
                    time.sleep(exc.retry_after or 0.5)
                elif exc.code in ("unreachable", "timeout", "unknown_job", "frame_damaged", "damaged_blob"):
                    time.sleep(0.3)  # the engine was killed, or a damaged file was dropped: generate again
                else:
                    with self.counts.lock:
                        self.counts.errors.append(f"{exc.code}: {exc.message[:200]}")

    def follow(self, client: Any, job_id: str, name: str) -> None:
        """Poll to the end; a job that reports done must give every frame, whole, of the job's size."""
        moved, last = time.monotonic(), None
        while True:
            status = client.status(job_id)
            self.counts.add(requests=1)
            state = (status["status"], status["frames_done"], status.get("step"))
            if state != last:
                moved, last = time.monotonic(), state
            if status["status"] in ("done", "failed", "cancelled"):
                break
            if time.monotonic() - moved > HANG_S:
                self.counts.add(hung=1)
                return
            time.sleep(0.1)
        if status["status"] != "done":
            return
        for frame in status["frames"]:
            path = self.folder / "takes" / name / f"{job_id}-{frame:04d}.png"
            try:
                client.fetch_frame(job_id, frame, str(path), size=(64, 64))
                self.counts.add(requests=1)
            except self.core.client.EngineError as exc:
                if exc.code == "frame_damaged":
                    continue  # found and dropped: the next Generate makes it again
                if exc.code in ("unreachable", "timeout"):
                    return  # the engine was killed: its cache keeps the frames for the next Generate
                self.counts.add(frames_lost=1)
                with self.counts.lock:
                    self.counts.errors.append(f"frame {frame}: {exc.code}: {exc.message[:200]}")
                continue
            with Image.open(io.BytesIO(path.read_bytes())) as img:
                img.load()
                ok = img.size == (64, 64)
            self.counts.add(frames_checked=1, frames_lost=0 if ok else 1)

    def run(self) -> Counts:
        self.start_engine()
        assert self.served is not None
        self.rss.append(rss_mb(self.served.process.pid))
        threads = [threading.Thread(target=self.artist, args=(name, i), daemon=True)
                   for i, name in enumerate(TOKENS)]
        chaos = threading.Thread(target=self.chaos, daemon=True)
        for thread in (*threads, chaos):
            thread.start()
        for thread in (*threads, chaos):
            thread.join(self.seconds + HANG_S + 60)
            if thread.is_alive():
                self.counts.add(hung=1)
        self.stop.set()
        self.rss.append(rss_mb(self.served.process.pid))
        self.served.process.terminate()
        self.served.process.wait(timeout=30)
        return self.counts
