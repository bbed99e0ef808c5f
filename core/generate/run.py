"""A generation run as a plain state machine: shots → control maps → engine → takes on the VSE.

Main thread (`tick` reads and writes bpy data). One shot loop for both of the operator's
paths: `modal` calls `tick()` from a timer, `execute` (background mode, farms) in a loop.
Each `tick(scene)` does at most one bounded step:

1. start connecting to the engine, on a `core.worker.Worker` (the local engine can take
   minutes to start; the UI keeps rendering control maps meanwhile);
2. per shot: check it and open its `ShotRender` (`collect_shot` inside
   `conditioning.pipeline.stepwise`), one hashing step, one frame's passes or one depth
   map a tick, then describe its engine job (`collect_shot` again, with the finished maps);
3. every shot's engine job (`ShotsOnEngine`, shots in turn): one map upload, one submit,
   or one poll (fetching at most one finished frame) a step; the jobs reach the engine
   close together, so a cluster engine runs them side by side. In the UI these steps run
   on a `Worker` thread (``engine_thread``): an upload or a poll over a slow or shared
   network never holds a tick, which only takes the finished takes from its queue. In
   background mode (and for tests that count steps) they run a step a tick on this thread;
4. place one finished take on the VSE a tick, as jobs finish.

`cancel()` takes effect at the next tick, whatever the phase: a conditioning render in
progress is aborted (no folder claims completeness, the user's render settings come back),
shots not yet sent are dropped, running engine jobs are cancelled within a denoising
step; finished takes are kept and placed, unfinished ones never get a strip.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..client.link import connect_task
from ..conditioning.pipeline import RenderNeeded, ShotRender, stepwise
from ..prefs import Prefs
from ..timeline.paths import Project
from ..worker import MsgDone, MsgException, Worker
from .all_shots import ShotFailure, ShotsOnEngine
from .shot import POLL_INTERVAL_S, Progress, ShotJob, TakeOutcome, shot_message, summary
from .shot_job import collect_shot, place_outcome

log = logging.getLogger(__name__)

WORK, IDLE, DONE = "work", "idle", "done"  # what a tick says: did work / only waited / the run is over


def pump_engine(engine: ShotsOnEngine, *, report: Callable[[Any], None], cancel: threading.Event) -> None:
    """Worker task: every shot's engine steps until all have ended, each ended shot reported
    (`TakeOutcome` or `ShotFailure`). ``cancel`` drops the run (Blender is closing the
    operator); the user's Cancel reaches the shots through ``should_cancel`` instead, so that
    their jobs are cancelled on the engine and their finished frames kept."""
    while not engine.finished and not cancel.is_set():
        worked, ended = engine.step()
        if ended is not None:
            report(ended)
        elif not worked:
            cancel.wait(POLL_INTERVAL_S)


class GenerationRun:
    """Generate takes for some shots, one bounded step per `tick(scene)`.

    ``hold_settings``: keep the conditioning render settings between the ticks of one shot
    (background mode: faster, Cycles keeps its scene); without it each tick gives the user's
    settings back before it returns (the UI). ``background``: connect on this thread, at the
    first tick, so an unreachable engine fails before any control map is rendered.
    ``engine_thread``: the engine's uploads, submits and polls on a worker thread (default: in
    the UI, not in background mode).
    Reports (level, text) collect in `reports` for the caller to show and clear.
    """

    def __init__(self, shots: list[str], project: Project, prefs: Prefs, *, hold_settings: bool = False,
                 background: bool = False, engine_thread: bool | None = None) -> None:
        self.shots = list(shots)
        self.project = project
        self.prefs = prefs
        self.hold_settings = hold_settings
        self.background = background
        self.engine_thread = not background if engine_thread is None else engine_thread
        self.phase = "connect"  # connect → maps → engine → done
        self.step_kind = ""  # what the last tick did: connect, maps, collect, upload, poll, place, wait
        self.reports: list[tuple[str, str]] = []
        self.failures = 0
        self.outcomes: list[TakeOutcome] = []  # every shot's outcome, in the order the jobs ended
        self.strips: list[Any] = []  # strips placed
        self.client: Any = None
        self._cancel = threading.Event()
        self._cancel_seen = False
        self._worker: Worker | None = None
        self._index = 0  # the shot whose control maps come next
        self._render: ShotRender | None = None
        self._jobs: list[ShotJob] = []
        self._engine: ShotsOnEngine | None = None
        self._pump: Worker | None = None  # runs the engine steps when engine_thread
        self._pump_ended = False
        self._to_place: list[TakeOutcome] = []
        self._latest: Progress | None = None
        self._fractions: dict[str, float] = {}
        self._engine_failed = False
        self._synced = False

    # -- control ---------------------------------------------------------

    def cancel(self) -> None:
        """Stop at the next tick (any thread)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self.phase == "done"

    @property
    def rendering(self) -> ShotRender | None:
        """The shot's control-map render in progress, if any."""
        return self._render

    def abort(self, scene: Any) -> None:
        """End now, between ticks (Blender is closing the operator): nothing half made is left."""
        self._cancel.set()
        if self._render is not None:
            self._render.abort(scene)
            self._render = None
        if self._worker is not None:
            self._worker.cancel()
        if self._pump is not None:
            self._pump.cancel()  # stops after its current step
        if self._engine is not None:
            self._engine.cancel_running()  # finished frames stay; Generate again resumes the takes
        self.phase = "done"

    # -- the state machine -----------------------------------------------

    def tick(self, scene: Any) -> str:
        """One bounded step; returns WORK, IDLE (only waited on the engine) or DONE."""
        if self.phase == "done":
            return DONE
        self.step_kind = ""
        self._read_worker()
        if self._engine_failed:  # no engine: no more control maps, nothing to send
            if self._render is not None:
                self._render.abort(scene)
                self._render = None
            self.phase = "done"
            return DONE
        if self._cancel.is_set() and not self._cancel_seen:
            self._on_cancel(scene)
            if self.phase == "done":
                return DONE
        if self.phase == "connect":
            self.step_kind = "connect"
            self._worker = Worker(connect_task, self.prefs, name="viewfinder-connect")
            if self.background:
                self._worker.run_here()
            else:
                self._worker.start()
            self.phase = "maps"
            return WORK
        if self.phase == "maps":
            return self._tick_maps(scene)
        return self._tick_engine(scene)

    def _read_worker(self) -> None:
        if self._worker is None or self.client is not None or self._engine_failed:
            return
        for message in self._worker.messages():
            if isinstance(message, MsgDone):
                self.client = message.result
                warning = getattr(self.client, "warning", None)
                if warning:
                    self._report("WARNING", warning)
            elif isinstance(message, MsgException) and not message.cancelled:
                self._report("ERROR", str(message.error) or message.error.__class__.__name__)
                self.failures = len(self.shots)
                self._engine_failed = True

    def _on_cancel(self, scene: Any) -> None:
        self._cancel_seen = True
        self.step_kind = "cancel"
        if self._worker is not None:
            self._worker.cancel()
        if self._render is not None:
            self._render.abort(scene)
            self._render = None
        if self.phase in ("connect", "maps") or self._engine is None:
            self._finish()

    def _shot(self, scene: Any, name: str) -> Any:
        """The shot's settings by name. The list is brought in line with the markers once per run
        (a film of 100 shots: 0.2 s when done at every step); after that, the handlers keep it so."""
        settings = scene.viewfinder
        if not self._synced:
            self._synced = True
            return settings.shots.get(name)
        return settings.shot_list.get(name)

    def _tick_maps(self, scene: Any) -> str:
        render = self._render
        if render is not None:
            name = self.shots[self._index]
            if not render.done:
                self.step_kind = "maps"
                try:
                    render.step(scene)  # aborts itself (folder, settings) when it raises
                except Exception as exc:
                    self._shot_failed(name, exc)
                return WORK
            self.step_kind = "collect"
            self._render = None
            self._index += 1
            try:
                shot = self._shot(scene, name)
                if shot is None:
                    raise RuntimeError("the shot was deleted while its control maps rendered")
                with stepwise(render.result, hold_settings=self.hold_settings):
                    job = collect_shot(scene, shot, self.project, self.prefs)
            except Exception as exc:
                self.failures += 1
                self._report("ERROR", shot_message(name, exc))
                return WORK
            for warning in job.warnings:  # the maps' bad input, animated settings' clamped values, ...
                self._report("WARNING", warning)
            self._jobs.append(job)
            return WORK
        if self._index < len(self.shots):
            self.step_kind = "maps"
            name = self.shots[self._index]
            shot = self._shot(scene, name)
            if shot is None:
                self._index += 1
                self._report("WARNING", f"Shot '{name}' disappeared while generating: skipped")
                return WORK
            try:
                with stepwise(hold_settings=self.hold_settings):
                    collect_shot(scene, shot, self.project, self.prefs)
                raise RuntimeError("collect_shot rendered nothing")  # stepwise always asks for the render
            except RenderNeeded as need:
                self._render = need.render
            except Exception as exc:
                self._shot_failed(name, exc)
            return WORK
        self.phase = "engine"
        if not self._jobs:
            self._finish()
            return DONE
        return WORK

    def _tick_engine(self, scene: Any) -> str:
        if self._to_place:
            self.step_kind = "place"
            self._place(scene, self._to_place.pop(0))
            return WORK
        if self._engine is None:
            if self.client is None:
                self.step_kind = "wait"
                return IDLE
            self._engine = ShotsOnEngine(self.client, on_progress=self._on_progress, should_cancel=self._cancel.is_set)
            for job in self._jobs:
                self._engine.add(job)
            if self.engine_thread:
                self._pump = Worker(pump_engine, self._engine, name="viewfinder-engine").start()
        if self._pump is not None:
            return self._tick_pump(scene)
        if self._engine.finished:
            self._finish()
            return DONE
        worked, ended = self._engine.step()
        self.step_kind = self._engine.last_kind
        self._ended(ended)
        return WORK if worked or ended is not None else IDLE

    def _tick_pump(self, scene: Any) -> str:
        """The engine steps run on the pump's thread: take what ended from its queue."""
        assert self._pump is not None
        self.step_kind = "wait"
        for message in self._pump.messages():
            if isinstance(message, MsgDone):
                self._pump_ended = True
            elif isinstance(message, MsgException):
                self._pump_ended = True
                if not message.cancelled:
                    self.failures += 1
                    self._report("ERROR", f"Talking to the engine failed: {message.error}")
            else:
                self._ended(message)
        if self._to_place:
            self.step_kind = "place"
            self._place(scene, self._to_place.pop(0))
            return WORK
        if self._pump_ended:
            self._finish()
            return DONE
        return IDLE

    def _ended(self, ended: TakeOutcome | ShotFailure | None) -> None:
        if isinstance(ended, ShotFailure):
            self.failures += 1
            self._report("ERROR", shot_message(ended.shot, ended.error))
        elif ended is not None:
            self._fractions[ended.shot] = 1.0
            self._to_place.append(ended)

    def _shot_failed(self, name: str, exc: BaseException) -> None:
        log.debug("control maps of %s failed", name, exc_info=True)
        self._render = None
        self._index += 1
        self.failures += 1
        self._report("ERROR", shot_message(name, exc))

    def _place(self, scene: Any, outcome: TakeOutcome) -> None:
        self.outcomes.append(outcome)
        try:
            strip = place_outcome(scene, outcome)
        except Exception as exc:
            log.debug("placing the take failed", exc_info=True)
            self.failures += 1
            self._report("ERROR", shot_message(outcome.shot, exc))
            return
        if strip is not None:
            self.strips.append(strip)
        if outcome.error:
            self.failures += 1
        self._report("ERROR" if outcome.error else "INFO", summary(outcome))

    def _finish(self) -> None:
        if self._cancel.is_set():
            self._report("WARNING", "Generation cancelled: finished takes kept")
        self.phase = "done"

    def _on_progress(self, progress: Progress) -> None:
        self._latest = progress
        self._fractions[progress.shot] = progress.frames_done / progress.frames_total if progress.frames_total else 0.0

    def _report(self, level: str, text: str) -> None:
        self.reports.append((level, text))

    # -- what the UI shows -----------------------------------------------

    def status(self) -> str:
        """'Shot 2/5 · control maps 37/120', 'Shot 1/3 · frame 12/120, step 8/20', …"""
        total = len(self.shots)
        if self.phase == "connect":
            return "starting"
        if self.phase == "maps":
            head = f"Shot {min(self._index + 1, total)}/{total}"
            render = self._render
            if render is None:
                return f"{head} · control maps"
            if render.phase == "hash":
                return f"{head} · checking control maps"
            if render.phase == "depth":
                return f"{head} · depth maps {render.depth_done}/{len(render.frames)}"
            if render.phase != "render":
                return f"{head} · writing control maps"
            return f"{head} · control maps {render.frames_rendered}/{len(render.frames)}"
        if self.phase == "engine":
            if self.client is None:
                return "waiting for the engine to start"
            p = self._latest
            engine = self._engine
            # Shots past the engine's job quota wait for a slot (the engine thread moves them on).
            waiting = f" · waiting for the engine ({engine.in_flight} in flight)" if engine and engine.held else ""
            if p is None:
                return f"{len(self._jobs)} shot(s): uploading control maps{waiting}"
            number = self.shots.index(p.shot) + 1 if p.shot in self.shots else 0
            text = f"Shot {number}/{total} · frame {p.frames_done}/{p.frames_total}"
            if p.steps:
                text += f", step {p.step}/{p.steps}"
            if p.windows:
                text += f", window {p.window}/{p.windows}"
            if p.eta_s:
                text += f", about {int(p.eta_s)} s left"
            return text + waiting
        return "done"

    def fraction(self) -> float:
        """0..1 for the progress bar: a tenth for the control maps, the rest for the engine."""
        total = max(1, len(self.shots))
        if self.phase in ("connect", "maps"):
            render = self._render
            part = render.frames_rendered / max(1, len(render.frames)) if render is not None else 0.0
            return 0.1 * (self._index + part) / total
        if self.phase == "engine":
            return 0.1 + 0.9 * sum(self._fractions.values()) / max(1, len(self._jobs))
        return 1.0
