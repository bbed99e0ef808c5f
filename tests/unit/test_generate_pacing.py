"""Generate All under the engine's job quota (core/generate/all_shots.py ShotsOnEngine): at most the quota
in flight, the next shot submitted as one ends, a 429 a wait and never a failure. A stand-in
engine keeps the quota as the real one does (engine/api/server.py); no bpy, no network."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from helpers import load

generate = load("core.generate.shot")
generate_all = load("core.generate.all_shots")
client_mod = load("core.client.http")
request_mod = load("core.jobs.request")

PNG = bytes.fromhex("89504e470d0a1a0a")  # enough for the stand-in: its frames are never decoded here


class QuotaEngine:
    """A stand-in engine: ``quota`` jobs per token at once, a job done after ``polls`` statuses."""

    def __init__(self, quota: int, *, publish: bool = True, polls: int = 2, retry_after: float = 0.01) -> None:
        self.quota, self.publish, self.polls, self.retry_after = quota, publish, polls, retry_after
        self.base_url = "http://stand-in"
        self.jobs: dict[str, dict] = {}
        self.refused = 0
        self.most_in_flight = 0

    def active(self) -> int:
        return sum(1 for j in self.jobs.values() if j["status"] == "running")

    def limits(self):
        return {"job_quota": self.quota, "jobs_active": self.active()} if self.publish else None

    def upload_blob(self, data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def submit(self, body: dict) -> str:
        if self.active() >= self.quota:
            self.refused += 1
            raise client_mod.EngineError("this token already has jobs queued or running", code="queue_full",
                                         status=429, retry_after=self.retry_after)
        job_id = f"job{len(self.jobs)}"
        self.jobs[job_id] = {"status": "running", "frames": [f["frame"] for f in body["frames"]], "left": self.polls}
        self.most_in_flight = max(self.most_in_flight, self.active())
        return job_id

    def status(self, job_id: str) -> dict:
        job = self.jobs[job_id]
        job["left"] -= 1
        if job["left"] <= 0:
            job["status"] = "done"
        return {"status": job["status"], "frames": job["frames"] if job["status"] == "done" else []}

    def statuses(self, ids):
        return None  # as an engine without GET /jobs?ids=: each shot polls on its own

    def fetch_frame(self, job_id: str, frame: int, dest: str, **_bounds: object) -> str:
        Path(dest).write_bytes(PNG)
        return dest

    def cancel(self, job_id: str) -> dict:
        self.jobs[job_id]["status"] = "cancelled"
        return {"status": "cancelled"}


def shot_job(tmp_path: Path, name: str) -> object:
    folder = tmp_path / name / "conditioning" / "depth"
    folder.mkdir(parents=True)
    maps = {}
    for frame in (1, 2):
        path = folder / f"{frame:04d}.png"
        path.write_bytes(f"{name} {frame}".encode())
        maps[frame] = {"depth": path, "pose": None, "flow": None}
    models = {"base": "sd15", "controlnet_depth": "depth", "controlnet_pose": None}
    request = request_mod.JobRequest.from_parts(name, models, {}, {"seed": 1, "steps": 2})
    return generate.ShotJob(shot=name, frames=[1, 2], conditioning_dir=folder.parent, takes_dir=tmp_path / name / "takes",
                            maps=maps, request=request, models=models,
                            prompts={"prompt": name, "style_prompt": "", "negative_prompt": ""},
                            settings={"seed": 1, "steps": 2})


def run_film(tmp_path: Path, engine: QuotaEngine, shots: int) -> tuple[list, list[tuple[int, int]]]:
    """Every shot through ShotsOnEngine; the outcomes and (in flight, held) after each step."""
    stage = generate_all.ShotsOnEngine(engine)
    for k in range(shots):
        stage.add(shot_job(tmp_path, f"Shot{k:02d}"))
    ended, seen = [], []
    for _ in range(20_000):
        if stage.finished:
            return ended, seen
        _worked, outcome = stage.step()
        seen.append((stage.in_flight, stage.held))
        if outcome is not None:
            ended.append(outcome)
    raise AssertionError("the film never finished")


@pytest.mark.parametrize("quota", [2, 16])  # 16: issue 22's "done when", a 48-shot film under the default quota
def test_a_film_of_three_times_the_published_quota_keeps_the_quota_in_flight(tmp_path: Path, quota: int) -> None:
    engine = QuotaEngine(quota=quota)
    ended, seen = run_film(tmp_path, engine, shots=3 * quota)
    assert sorted(o.shot for o in ended) == [f"Shot{k:02d}" for k in range(3 * quota)]
    assert all(isinstance(o, generate.TakeOutcome) and o.complete and not o.error for o in ended), ended
    assert engine.most_in_flight == quota and engine.refused == 0  # paced by GET /limits, never refused
    assert max(flight for flight, _ in seen) == quota
    assert any(held > 0 for _, held in seen)  # what the status bar shows as "waiting for the engine"


def test_an_engine_that_publishes_no_quota_paces_by_its_429s(tmp_path: Path) -> None:
    engine = QuotaEngine(quota=2, publish=False)
    ended, _seen = run_film(tmp_path, engine, shots=6)
    assert len(ended) == 6 and all(o.complete and not o.error for o in ended), ended
    assert engine.refused > 0 and engine.most_in_flight == 2


def test_a_shot_refused_for_the_quota_waits_retry_after_and_is_not_a_failure(tmp_path: Path) -> None:
    engine = QuotaEngine(quota=0, publish=False, retry_after=0.3)  # every submit refused until the quota opens
    shot = generate.EngineShot(shot_job(tmp_path, "Wide"), engine)
    while shot.phase != "submit":
        assert shot.step()
    assert shot.step() is False and shot.throttled and shot.outcome is None
    engine.quota = 1
    assert shot.step() is False and engine.refused == 1  # not asked again before Retry-After
    while shot.throttled:
        time.sleep(0.01)
    assert shot.step() is True and shot.phase == "poll" and engine.refused == 1


@pytest.mark.parametrize(("header", "seconds"), [
    ("3", 3.0), ("0.5", 0.5), (None, 1.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 1.0), ("nan", 1.0),
    ("-4", 0.1), ("1e9", 60.0),
])
def test_retry_after_is_read_and_bounded(header, seconds) -> None:
    assert client_mod.retry_after_s(header) == seconds


class CancelMidFetch(QuotaEngine):
    """Esc pressed while the second frame downloads: the client's fetch ends with code "cancelled"."""

    def __init__(self, cancel) -> None:
        super().__init__(quota=4, polls=1)
        self.cancel_event, self.cancelled_jobs = cancel, []

    def fetch_frame(self, job_id: str, frame: int, dest: str, **bounds: object) -> str:
        if frame == 2:
            self.cancel_event.set()
            assert bounds["should_cancel"]()  # the shot hands the fetch its cancel
            raise client_mod.EngineError(f"Frame {frame} from the engine was refused: cancelled; it was not saved",
                                         code="cancelled")
        return super().fetch_frame(job_id, frame, dest)

    def cancel(self, job_id: str) -> dict:
        self.cancelled_jobs.append(job_id)
        return super().cancel(job_id)


def test_a_frame_download_cut_by_cancel_ends_the_shot_cancelled_with_its_finished_frames(tmp_path: Path) -> None:
    import threading

    cancel = threading.Event()
    engine = CancelMidFetch(cancel)
    stage = generate_all.ShotsOnEngine(engine, should_cancel=cancel.is_set)
    stage.add(shot_job(tmp_path, "Shot00"))
    ended = []
    for _ in range(200):
        if stage.finished:
            break
        _worked, outcome = stage.step()
        if outcome is not None:
            ended.append(outcome)
    assert len(ended) == 1 and isinstance(ended[0], generate.TakeOutcome), ended  # not a ShotFailure
    outcome = ended[0]
    assert outcome.cancelled and not outcome.complete and not outcome.error
    assert outcome.frames == [1] and engine.cancelled_jobs == ["job0"]
    assert sorted(p.name for p in outcome.take_dir.glob("*.png")) == ["0001.png"]
