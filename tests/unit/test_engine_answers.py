"""An engine's status answers are input (issue 22): frames the shot never asked for are not fetched,
a missing or unknown status ends the shot instead of polling forever, wrong types never reach the UI,
and every frame is fetched with the job's size and the shot's cancel. No bpy, no network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_generate_pacing import QuotaEngine, shot_job  # noqa: E402

generate = load("core.generate.shot")
downloads = load("core.client.downloads")


class Lying(QuotaEngine):
    """A stand-in whose statuses are ``answer`` (merged over a done job's)."""

    def __init__(self, answer: dict) -> None:
        super().__init__(quota=4)
        self.answer = answer
        self.fetched: list[tuple[int, dict]] = []

    def status(self, job_id: str) -> dict:
        return {"status": "done", "frames": [1, 2], **self.answer}

    def fetch_frame(self, job_id: str, frame: int, dest: str, **bounds: object) -> str:
        self.fetched.append((frame, bounds))
        return super().fetch_frame(job_id, frame, dest)


def run(tmp_path: Path, engine: QuotaEngine) -> object:
    return generate.run_shot(shot_job(tmp_path, "Wide"), engine)


def test_frames_never_asked_for_are_not_fetched(tmp_path: Path) -> None:
    engine = Lying({"frames": list(range(1, 5001))})
    outcome = run(tmp_path, engine)
    assert outcome.complete and sorted(f for f, _ in engine.fetched) == [1, 2]
    assert sorted(p.name for p in outcome.take_dir.glob("*.png")) == ["0001.png", "0002.png"]
    _, bounds = engine.fetched[0]
    assert bounds["size"] == (512, 512) and callable(bounds["should_cancel"])  # the job's size


@pytest.mark.parametrize("answer, words", [
    ({"status": None}, "'status'"), ({"status": "dancing"}, "'status'"), ({"frames": "1,2"}, "'frames'"),
    ({"frames": [1.5]}, "'frames'"), ({"frames": [True]}, "'frames'"),
])
def test_a_status_of_the_wrong_shape_ends_the_shot_with_a_message(tmp_path: Path, answer: dict, words: str) -> None:
    with pytest.raises(generate.GenerationError) as info:
        run(tmp_path, Lying(answer))
    assert words in str(info.value) and "not what it should be" in str(info.value)


def test_a_missing_status_does_not_poll_forever(tmp_path: Path) -> None:
    engine = Lying({})
    engine.status = lambda job_id: {"frames": []}  # type: ignore[method-assign]
    with pytest.raises(generate.GenerationError):
        run(tmp_path, engine)


@pytest.mark.parametrize("eta", ["soon", [1], {"s": 1}, float("nan"), 1e300, True])
def test_fields_of_the_wrong_type_never_reach_the_progress(tmp_path: Path, eta: object) -> None:
    seen = []
    engine = Lying({"eta_s": eta, "step": "x", "steps": None, "detail": "y", "messages": "z", "generator": "VIDEO"})
    outcome = generate.run_shot(shot_job(tmp_path, "Wide"), engine, on_progress=seen.append)
    assert outcome.complete
    assert all(p.eta_s is None and p.step == 0 and p.steps == 0 and p.window == 0 for p in seen)


def test_a_frame_check_allows_one_header_of_the_asked_size(tmp_path: Path) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def png(width: int, height: int, rows: bytes | None = None, extra: bytes = b"") -> bytes:
        head = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        data = rows if rows is not None else (b"\0" + b"\x10" * width) * height
        return b"\x89PNG\r\n\x1a\n" + head + extra + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b"")

    cases = {
        "whole": (png(8, 4), None),
        "second": (png(8, 4, extra=chunk(b"IHDR", struct.pack(">IIBBBBB", 9000, 9000, 8, 0, 0, 0, 0))),
                   "more than one image header"),
        "size": (png(9, 4), "9x4 pixels"),
        "bomb": (png(8, 4, rows=b"\0" * (1 << 22)), "inflating past"),
        "short": (png(8, 4, rows=b"\0" * 9), "incomplete"),
    }
    for name, (data, problem) in cases.items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        found = downloads.png_frame_problem(path, (8, 4))
        assert (found is None) if problem is None else (problem in (found or "")), (name, found)
