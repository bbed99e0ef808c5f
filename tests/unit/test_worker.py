"""core/worker.Worker: its own thread, its queue of typed messages, its cancel event. No bpy."""

from __future__ import annotations

import threading

from helpers import load

worker_mod = load("core.worker")
Worker, MsgProgress, MsgDone, MsgException = worker_mod.Worker, worker_mod.MsgProgress, worker_mod.MsgDone, worker_mod.MsgException


def counting(n, *, report, cancel):
    for i in range(n):
        report(MsgProgress((i + 1) / n, f"step {i + 1}"))
    return n * 10


def test_progress_then_done_in_order_and_nothing_after():
    worker = Worker(counting, 3).start()
    worker.join(10)
    assert not worker.is_alive()
    assert worker.messages() == [MsgProgress(1 / 3, "step 1"), MsgProgress(2 / 3, "step 2"), MsgProgress(1.0, "step 3"),
                                 MsgDone(30)]
    assert worker.messages() == [] and worker.poll() is None


def test_run_here_leaves_the_same_messages_on_the_calling_thread():
    seen = []

    def where(*, report, cancel):
        seen.append(threading.current_thread())
        return "ok"

    worker = Worker(where).run_here()
    assert seen == [threading.current_thread()] and worker.messages() == [MsgDone("ok")]


def test_an_exception_is_the_last_message():
    def boom(path, *, report, cancel):
        report(MsgProgress(None, "reading"))
        raise FileNotFoundError(path)

    worker = Worker(boom, "/nowhere").start()
    worker.join(10)
    progress, last = worker.messages()
    assert progress == MsgProgress(None, "reading")
    assert isinstance(last, MsgException) and isinstance(last.error, FileNotFoundError) and not last.cancelled
    assert str(last.error) == "/nowhere"


def test_cancel_reaches_the_task_and_is_flagged():
    started = threading.Event()

    def waits(*, report, cancel):
        started.set()
        assert cancel.wait(10)
        raise RuntimeError("stopped")

    worker = Worker(waits).start()
    assert started.wait(10) and worker.is_alive() and worker.poll() is None
    worker.cancel()
    worker.join(10)
    (last,) = worker.messages()
    assert isinstance(last, MsgException) and last.cancelled and worker.cancelled


def test_poll_waits_for_a_message():
    release = threading.Event()

    def later(*, report, cancel):
        release.wait(10)
        return 7

    worker = Worker(later).start()
    assert worker.poll() is None
    release.set()
    assert worker.poll(timeout=10) == MsgDone(7)


def test_prefs_are_frozen_and_plain():
    import dataclasses

    import pytest

    prefs = load("core.prefs").Prefs(device="cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        prefs.device = "cuda"
    assert dataclasses.asdict(prefs)["device"] == "cpu"
