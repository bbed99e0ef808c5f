"""How long Generate's ticks hold Blender's main thread, on the demo film, at 512×288 and 1024×576.

    .venv/bin/python benchmarks/bench_ui.py [--sizes 512,1024] [--engine stand-in|real] [--models DIR]
                                            [--latency-ms 150] [--engine-on-main]

Drives the state machine the UI's timer drives (core/generate_run.GenerationRun, with the
UI's settings: the engine connects on the worker, the user's render settings come back
after every tick) tick by tick in headless Blender, and prints the longest and the median
tick in ms, overall and per kind of step.

The engine: by default an in-process stand-in that speaks the client's calls (upload,
submit, status, fetch) and answers at once, each frame a copy of its depth map, so the
figures are the add-on's own work per tick and a run takes minutes (``--latency-ms``: each
call answers after that long, as an engine across a network would); ``--engine real``
starts a local engine process with tiny random-weight models (``make-tiny-models``;
``--models DIR`` for others), which on a 2-core CPU takes about a minute per frame at
512×288 and competes with Blender for the cores.

Target (issue 12): no tick longer than one control-map frame plus 20 ms. A "maps:render"
tick is one control-map frame (one Cycles render of the data passes, the user's settings
set and given back around it); the check compares every other tick (state hashing, depth
maps, meta.json, describing the job, uploads, polls, placing a take) with the median frame
tick plus 20 ms. The engine's calls run on the run's engine thread, as in the UI;
``--engine-on-main`` runs them a step a tick on the main thread instead (background mode,
and the UI before the engine thread). Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, make_tiny_models  # noqa: E402

sys.path.insert(0, str(ROOT))
# Blender reads HOME once, at import: a throwaway user folder for the extension.
os.environ["HOME"] = tempfile.mkdtemp(prefix="viewfinder-bench-home-")

import bpy  # noqa: E402

from demo.run_demo import ENGINE_PYTHON, install_extension  # noqa: E402
from demo.scene import build_demo_scene  # noqa: E402


def tiny_models(folder: Path) -> Path:
    if not (folder / "sd15").is_dir():
        make_tiny_models(folder, python=ENGINE_PYTHON)
    return folder


class StandInEngine:
    """The engine client's calls, answered at once: a job's frames are ready two at a time."""

    base_url = "stand-in"

    def __init__(self, latency_s: float = 0.0) -> None:
        self.blobs: dict[str, bytes] = {}
        self.jobs: dict[str, dict] = {}
        self.latency_s = latency_s

    def _network(self) -> None:
        if self.latency_s:
            time.sleep(self.latency_s)

    def health(self) -> dict:
        return {"status": "ok", "device": "stand-in"}

    def upload_blob(self, data: bytes) -> str:
        self._network()
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    def submit(self, body: dict) -> str:
        self._network()
        job_id = f"job{len(self.jobs) + 1}"
        self.jobs[job_id] = {"frames": body["frames"], "ready": 0, "steps": body.get("steps", 1)}
        return job_id

    def status(self, job_id: str) -> dict:
        self._network()
        return self._status(job_id)

    def _status(self, job_id: str) -> dict:
        job = self.jobs[job_id]
        job["ready"] = min(len(job["frames"]), job["ready"] + 2)
        frames = [f["frame"] for f in job["frames"][:job["ready"]]]
        done = job["ready"] == len(job["frames"])
        return {"status": "done" if done else "running", "frames": frames, "step": job["steps"],
                "steps": job["steps"]}

    def fetch_frame(self, job_id: str, frame: int, path: Path, **_bounds: object) -> None:
        self._network()
        entry = next(f for f in self.jobs[job_id]["frames"] if f["frame"] == frame)
        Path(path).write_bytes(self.blobs[entry["depth"]])

    def statuses(self, job_ids: list[str]) -> dict:
        self._network()
        return {job_id: self._status(job_id) for job_id in job_ids}

    def cancel(self, job_id: str) -> None:
        pass


def run_once(vf, models: Path, long_edge: int, steps: int, out: Path,
             engine_thread: bool = True) -> tuple[list[tuple[str, float]], str]:
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    build_demo_scene(scene)
    settings = scene.viewfinder
    settings.model = str(models / "sd15")
    settings.controlnet_depth = str(models / "controlnet-depth")
    settings.controlnet_pose = str(models / "controlnet-pose")
    settings.long_edge, settings.steps, settings.batch_size = long_edge, steps, 4
    for shot in settings.shots:
        shot.prompt = "a street at dusk"
        shot.coherence = "INDEPENDENT"
    bpy.ops.wm.save_as_mainfile(filepath=str(out / f"film-{long_edge}.blend"))
    scene = bpy.context.scene
    project = vf.operators.common.project_of(bpy.context)
    prefs = vf.preferences.get_prefs(bpy.context)
    run_mod = vf.core.generate.run
    run = run_mod.GenerationRun([s.name for s in settings.shots], project, prefs, engine_thread=engine_thread)
    ticks: list[tuple[str, float]] = []
    size = "?"
    while True:
        rendering = run.rendering.phase if run.rendering is not None else ""  # hash, render, depth, finish
        started = time.perf_counter()
        state = run.tick(scene)
        ms = (time.perf_counter() - started) * 1000.0
        ticks.append((f"maps:{rendering}" if run.step_kind == "maps" and rendering else run.step_kind, ms))
        if run.rendering is not None:
            size = f"{run.rendering.width}x{run.rendering.height}"
        if state == run_mod.DONE:
            break
        if state == run_mod.IDLE:
            time.sleep(0.05)  # the UI's timer: nothing to do until the engine has news
    errors = [text for level, text in run.reports if level == "ERROR"]
    if errors or len(run.strips) != len(settings.shots):
        raise SystemExit(f"the run did not place every take: {errors}")
    return ticks, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024", help="long edges (the demo is 16:9)")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps (engine time, not tick time)")
    parser.add_argument("--models", type=Path, help="folder with sd15, controlnet-depth, controlnet-pose")
    parser.add_argument("--engine", choices=("stand-in", "real"), default="stand-in")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="stand-in: each engine call takes this long")
    parser.add_argument("--engine-on-main", action="store_true",
                        help="the engine's calls a step a tick on the main thread (not the UI's engine thread)")
    args = parser.parse_args()
    os.environ.setdefault("VIEWFINDER_ENGINE_PYTHON", ENGINE_PYTHON)
    out = Path(tempfile.mkdtemp(prefix="viewfinder-bench-ui-"))
    vf = importlib.import_module(install_extension())
    if args.engine == "real":
        models = args.models or tiny_models(Path(tempfile.gettempdir()) / "viewfinder-bench-tiny-models")
    else:
        models = out / "no-models"  # never loaded: the stand-in answers
        engine = StandInEngine(args.latency_ms / 1000.0)
        vf.core.generate.run.connect_task = lambda prefs, *, report, cancel: engine
    where = "on the main thread" if args.engine_on_main else "on the engine thread"
    print(f"Blender {bpy.app.version_string}, {os.cpu_count()} CPUs, {args.engine} engine ({args.latency_ms:g} ms a "
          f"call, {where}); demo film, 3 shots × 24 frames; ms per tick")
    print(f"{'size':>9} {'ticks':>6} {'longest':>8} {'median':>7} {'frame med':>9} {'other max':>9}  "
          "longest by kind" + " " * 60 + "target")
    for edge in (int(e) for e in args.sizes.split(",")):
        ticks, size = run_once(vf, models, edge, args.steps, out, engine_thread=not args.engine_on_main)
        (out / f"ticks-{edge}.json").write_text(json.dumps(ticks))
        times = [ms for _kind, ms in ticks]
        by_kind: dict[str, list[float]] = {}
        for kind, ms in ticks:
            by_kind.setdefault(kind or "-", []).append(ms)
        frame = statistics.median(by_kind.get("maps:render", [0.0]))
        other = max((ms for kind, ms in ticks if kind != "maps:render"), default=0.0)
        worst = " ".join(f"{k}={max(v):.0f}" for k, v in sorted(by_kind.items()))
        verdict = "met" if other <= frame + 20.0 else f"NOT met ({other:.0f} > {frame:.0f} + 20)"
        print(f"{size:>9} {len(ticks):>6} {max(times):8.1f} {statistics.median(times):7.1f} {frame:9.1f} "
              f"{other:9.1f}  {worst:<75} {verdict}")
    print(f"every tick (kind, ms): {out}/ticks-*.json")
    vf.core.client.process.shutdown_engine()
    return 0


if __name__ == "__main__":
    sys.exit(main())
