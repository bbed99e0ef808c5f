"""A studio's GPU pool, simulated: ``benchmarks/bench_scale.py --simulate`` (issue 26).

The replicas run the stand-in model (``serve-ray --simulate-frame-s``, engine/ray/standin.py): a
frame is a sleep of ``--frame-s``, a pipeline load one of ``--load-s``, so a 2-core machine holds
16 replicas and everything else is real: a local Ray cluster, the ingress (fair share, journal),
Serve's routing by model, the shared frame cache, the HTTP client of the add-on.

Protocol, per replica count N (``--counts``, default 1 2 4 8 16), each on a fresh cluster:
1. Throughput: N warm-up jobs (every replica loads the checkpoint), then ``--shots-per-replica``
   x N shots of ``--frames`` frames submitted at once; frames per second from the first submit
   to the last job done, and its ratio to one replica's (goal >= 0.9 x N).
2. Latency: a big Generate All twice as long from one token while another token, like an artist
   iterating, submits a 2-frame shot, waits for it, pauses up to a big shot's time (uniformly, so
   it arrives anywhere in the big shots' units) and submits the next (up to
   ``--small`` of them, while the big one runs): p50 and p95 of submit-to-done, beside the
   shot's own time (2 frames). A unit is not preempted: the wait is for the first replica to
   finish its unit (a big shot's 8 frames), which the small shot then gets before the big one.
3. Model loads: 4 artists (tokens), each on their own checkpoint, each iterating over
   ``--artist-shots`` 4-frame shots; the pipeline loads the units report, with model routing on,
   then on a fresh cluster with ``--no-model-routing``. One pipeline per replica (``--max-pipelines 1``).
4. At N = 8 (``--kill-at``): the big Generate All again, one replica killed with SIGKILL once a
   quarter of its frames are done; frames lost = frames asked for minus frames fetched whole
   (goal 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, load_core, make_tiny_models, model_paths, png  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from ray_engine import RayEngine  # noqa: E402

TOKENS = ("bench", "big", "small", "artist0", "artist1", "artist2", "artist3")
SIZE = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pool = parser.add_argument_group("--simulate: the pool with the stand-in model (benchmarks/bench_pool.py)")
    pool.add_argument("--simulate", action="store_true", help="run the pool simulation instead")
    pool.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="replica counts")
    pool.add_argument("--frame-s", type=float, default=0.5, help="the stand-in's seconds per frame")
    pool.add_argument("--load-s", type=float, default=2.0, help="the stand-in's seconds per pipeline load")
    pool.add_argument("--sim-frames", type=int, default=16, help="frames per shot of the big Generate All")
    pool.add_argument("--shots-per-replica", type=int, default=4, help="big Generate All: shots per replica")
    pool.add_argument("--small", type=int, default=20, help="most small shots measured while the big one runs")
    pool.add_argument("--artist-shots", type=int, default=6, help="shots per artist in the model-load run")
    pool.add_argument("--kill-at", type=int, default=8, help="replica count of the kill run (0: none)")


class Pool:
    """One serve-ray cluster with the stand-in model and a client per token."""

    def __init__(self, engine: RayEngine, clients: dict[str, Any], models: list[dict[str, str]]) -> None:
        self.engine, self.clients, self.models = engine, clients, models
        self._maps: dict[tuple[str, int], str] = {}

    def shot(self, token: str, frames: int, seed: int, model: int = 0) -> dict[str, Any]:
        """A job body: ``frames`` depth maps (uploaded once per token), the checkpoint ``model``."""
        client = self.clients[token]
        for k in range(frames):
            if (token, k) not in self._maps:
                self._maps[token, k] = client.upload_blob(png(depth(k)))
        models = self.models[model]
        return {"shot": f"{token}-{seed}", "prompt": "a car chase at night", "seed": seed, "steps": 4,
                "width": SIZE, "height": SIZE, "batch_size": 1, "device": "cpu",
                "models": {"base": models["base"], "controlnet_depth": models["depth"], "controlnet_pose": None},
                "frames": [{"frame": k + 1, "depth": self._maps[token, k]} for k in range(frames)]}

    def wait(self, token: str, ids: list[str], poll_s: float = 0.1,
             forgotten_ok: bool = False) -> dict[str, dict[str, Any]]:
        """Every job's last status, polled as the add-on does (one request for up to 100 jobs).

        The ingress keeps the last 200 jobs: with ``forgotten_ok``, a job it no longer knows (it
        ended and others came after) counts as ended, without a status."""
        ended: dict[str, dict[str, Any]] = {}
        while len(ended) < len(ids):
            pending = [i for i in ids if i not in ended]
            for start in range(0, len(pending), 100):
                asked = pending[start:start + 100]
                found = self.clients[token].statuses(asked) or {}
                ended.update({i: s for i, s in found.items() if s["status"] not in ("queued", "running")})
                if forgotten_ok:
                    ended.update({i: {"status": "forgotten"} for i in asked if i not in found})
            time.sleep(poll_s)
        return ended


def depth(k: int) -> Any:
    import numpy as np

    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    blob = np.exp(-(((x - 0.2 - 0.05 * k) ** 2 + (y - 0.5) ** 2) / 0.02))
    return (np.clip(0.2 * (1 - y) + 0.8 * blob, 0, 1) * 65535).astype(np.uint16)


def start_pool(client_mod: Any, args: argparse.Namespace, work: Path, n: int, models: list[dict[str, str]],
               routing: bool = True) -> Pool:
    """serve-ray with N stand-in replicas (a logical CPU each), one pipeline per replica."""
    tokens = {name: secrets.token_urlsafe(18) for name in TOKENS}
    work.mkdir(parents=True, exist_ok=True)
    token_file = work / "tokens"
    token_file.write_text("".join(f"{name}:{token}\n" for name, token in tokens.items()))
    token_file.chmod(0o600)
    extra = ("--token-file", str(token_file), "--simulate-frame-s", str(args.frame_s), "--simulate-load-s",
             str(args.load_s), "--max-pipelines", "1", "--job-quota", "1000", "--split-min-frames", "1000",
             *(() if routing else ("--no-model-routing",)))
    engine = RayEngine(sys.executable, work, replicas=n, extra_args=extra, startup_timeout=900,
                       env={"OMP_NUM_THREADS": "1"})
    engine.start()
    clients = {name: client_mod.EngineClient(engine.url, token=token, timeout=60) for name, token in tokens.items()}
    return Pool(engine, clients, models)


def generate_all(pool: Pool, token: str, shots: int, frames: int, seed: int) -> tuple[list[str], float]:
    """Every shot submitted at once (maps uploaded first, as Generate All does); ids and submit time."""
    bodies = [pool.shot(token, frames, seed + s) for s in range(shots)]
    started = time.perf_counter()
    return [pool.clients[token].submit(body) for body in bodies], started


def measure_throughput(pool: Pool, args: argparse.Namespace, n: int, seed: int = 20_000) -> dict[str, float]:
    """Frames per second of the big Generate All, after every replica loaded the checkpoint, and
    where the replicas were idle (``idle``)."""
    warm, _ = generate_all(pool, "bench", n, 1, seed=10_000)
    pool.wait("bench", warm)
    epoch = time.time()
    ids, started = generate_all(pool, "bench", args.shots_per_replica * n, args.sim_frames, seed=seed)
    submitted = time.perf_counter() - started
    ended = pool.wait("bench", ids)
    wall = time.perf_counter() - started
    assert all(s["status"] == "done" for s in ended.values()), "a throughput job did not end done"
    return {"fps": args.shots_per_replica * n * args.sim_frames / wall, "wall_s": wall, "submit_s": submitted,
            **idle(ended, epoch)}


def idle(ended: dict[str, dict[str, Any]], epoch: float) -> dict[str, float]:
    """When each replica took its first unit (after the first submit), and its gaps between units
    (a unit's end as the ingress saw it to the next one's start on the replica), in seconds."""
    by_replica: dict[str, list[dict[str, Any]]] = {}
    for status in ended.values():
        for unit in status["replicas"]:
            by_replica.setdefault(unit["replica"], []).append(unit)
    firsts, gaps = [], []
    for units in by_replica.values():
        units.sort(key=lambda u: u["started"])
        firsts.append(units[0]["started"] - epoch)
        gaps += [b["started"] - a["finished"] for a, b in zip(units, units[1:])]
    return {"first_unit_s_max": max(firsts), "gap_s_median": statistics.median(gaps) if gaps else 0.0,
            "gap_s_max": max(gaps, default=0.0)}


def measure_latency(pool: Pool, args: argparse.Namespace, n: int) -> list[float]:
    """Seconds from submit to done of 2-frame shots, one after another with a pause of up to one big
    unit's time (so they arrive at any point of the big shots' units), while the big one runs."""
    ids, _ = generate_all(pool, "big", 2 * args.shots_per_replica * n, args.sim_frames, seed=30_000)
    pauses = random.Random(n)
    latencies: list[float] = []
    for i in range(args.small):
        time.sleep(pauses.uniform(0.0, args.sim_frames * args.frame_s))
        body = pool.shot("small", 2, seed=40_000 + i)
        started = time.perf_counter()
        job_id = pool.clients["small"].submit(body)
        pool.wait("small", [job_id], poll_s=0.02)
        latencies.append(time.perf_counter() - started)
        if ended(pool, "big", ids):
            break  # the big one has ended: later shots would not wait behind it
    pool.wait("big", ids, forgotten_ok=True)  # its first shots may have left the job table
    return latencies


def ended(pool: Pool, token: str, ids: list[str]) -> bool:
    found = pool.clients[token].statuses(ids[-100:]) or {}
    return all(s["status"] not in ("queued", "running") for s in found.values())


def measure_loads(pool: Pool, args: argparse.Namespace) -> int:
    """Pipeline loads the units report while 4 artists iterate, each on their own checkpoint."""
    loads = [0] * 4

    def artist(a: int) -> None:
        token = f"artist{a}"
        for i in range(args.artist_shots):
            job_id = pool.clients[token].submit({**pool.shot(token, 4, seed=50_000 + 100 * a + i), "models": {
                "base": pool.models[a + 1]["base"], "controlnet_depth": pool.models[0]["depth"],
                "controlnet_pose": None}})
            status = pool.wait(token, [job_id])[job_id]
            loads[a] += sum(1 for unit in status["replicas"] if unit.get("loaded"))

    threads = [threading.Thread(target=artist, args=(a,)) for a in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(loads)


def measure_kill(pool: Pool, args: argparse.Namespace, n: int, out: Path) -> dict[str, Any]:
    """The big Generate All with one of the N replicas killed a quarter of the way: frames lost."""
    ids, _ = generate_all(pool, "bench", args.shots_per_replica * n, args.sim_frames, seed=60_000)
    client, total = pool.clients["bench"], len(ids) * args.sim_frames
    while True:
        found = client.statuses(ids[:100]) or {}
        done = sum(s["frames_done"] for s in found.values())
        running = [u["pid"] for s in found.values() for u in s["replicas"] if u["status"] == "running" and u["pid"]]
        if done >= total // 4 and running:
            break
        time.sleep(0.05)
    os.kill(running[0], signal.SIGKILL)
    ended = pool.wait("bench", ids)
    fetched = 0
    for job_id, status in ended.items():
        for frame in status["frames"]:
            client.fetch_frame(job_id, frame, str(out / f"{job_id}-{frame}.png"))
            fetched += 1
    return {"frames": total, "frames_lost": total - fetched, "jobs_failed": sum(s["status"] != "done" for s in ended.values()),
            "units_retried": sum(u["attempts"] - 1 for s in ended.values() for u in s["replicas"])}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_count(client_mod: Any, args: argparse.Namespace, work: Path, n: int,
              models: list[dict[str, str]]) -> dict[str, Any]:
    """Every figure for N replicas: a cluster with model routing, then one without (loads only)."""
    figures: dict[str, Any] = {"replicas": n}
    pool = start_pool(client_mod, args, work / f"on-{n}", n, models)
    try:
        figures.update(measure_throughput(pool, args, n))
        figures["small_latency_s"] = measure_latency(pool, args, n)
        figures["loads_routing_on"] = measure_loads(pool, args)
        if n == args.kill_at:
            out = work / "kill-frames"
            out.mkdir(exist_ok=True)
            figures["kill"] = measure_kill(pool, args, n, out)
    finally:
        pool.engine.stop()
    off = start_pool(client_mod, args, work / f"off-{n}", n, models, routing=False)
    try:
        warm, _ = generate_all(off, "bench", n, 1, seed=10_000)  # the same start: checkpoint 0 everywhere
        off.wait("bench", warm)
        figures["loads_routing_off"] = measure_loads(off, args)
    finally:
        off.engine.stop()
    return figures


def report(figures: dict[str, Any], one_fps: float, args: argparse.Namespace) -> str:
    n, latency = figures["replicas"], figures["small_latency_s"]
    ratio = figures["fps"] / one_fps
    line = (f"{n:>2} replicas: {figures['fps']:6.2f} frames/s = {ratio:5.2f} x one replica (goal >= {0.9 * n:.1f}: "
            f"{'met' if ratio >= 0.9 * n else 'NOT met'}); small shot while a big one runs: p50 "
            f"{percentile(latency, 0.5):.2f} s, p95 {percentile(latency, 0.95):.2f} s (n={len(latency)}, its own "
            f"frames {2 * args.frame_s:.1f} s); pipeline loads, 4 artists x {args.artist_shots} shots on 4 "
            f"checkpoints: routing on {figures['loads_routing_on']}, off {figures['loads_routing_off']}"
            f"\n   big run {figures['wall_s']:.2f} s (all submitted in {figures['submit_s']:.2f} s); last replica's "
            f"first unit at {figures['first_unit_s_max']:.2f} s; between units a replica waited "
            f"{1000 * figures['gap_s_median']:.0f} ms (median), {1000 * figures['gap_s_max']:.0f} ms (longest)")
    if "kill" in figures:
        kill = figures["kill"]
        line += (f"\n   one of {n} replicas killed (SIGKILL) a quarter of the way: frames lost {kill['frames_lost']} "
                 f"of {kill['frames']} (goal 0), jobs failed {kill['jobs_failed']}, units sent again "
                 f"{kill['units_retried']}")
    return line


def run(args: argparse.Namespace) -> int:
    """The simulation at every replica count; one line of figures per count, and ``--json``."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    client_mod, _ = load_core("vf_core_pool")
    work = Path(tempfile.mkdtemp(prefix="vf-bench-pool-"))
    models_dir = Path(args.models_dir) if args.models_dir else work / "models"
    if not (models_dir / "sd15").is_dir():
        make_tiny_models(models_dir, "tiny", "--no-video")
    base = model_paths(models_dir, "base", "depth")
    models = [base]
    for i in range(1, 5):  # four more checkpoints: the artists'
        copy = work / f"checkpoint-{i}"
        shutil.copytree(base["base"], copy)
        models.append({**base, "base": str(copy)})
    print(f"stand-in model: {args.frame_s} s a frame, {args.load_s} s a load; big Generate All "
          f"{args.shots_per_replica} x N shots x {args.sim_frames} frames", flush=True)
    results = []
    for n in args.counts:
        results.append(run_count(client_mod, args, work, n, models))
        one_fps = results[0]["fps"] if args.counts[0] == 1 else results[0]["fps"] / args.counts[0]
        print(report(results[-1], one_fps, args), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0
