"""The modal loop shared by Make Reference Sheet and Finalize Take (operators/common.EngineJobModal).

Modal operators cannot run in background Blender, so the loop is driven here with a
stand-in context and events: the same code the UI runs after each timer tick.
"""

from __future__ import annotations

import queue
from types import SimpleNamespace


class _Workspace:
    def __init__(self) -> None:
        self.texts: list[str | None] = []

    def status_text_set(self, text: str | None) -> None:
        self.texts.append(text)


def _loop(vfmod):
    """The shared loop, its worker running a task the test feeds: Progress is posted, an
    exception raised, anything else returned."""
    common = vfmod("operators.common")
    Worker = vfmod("core.worker").Worker
    finished: list[object] = []
    feed: queue.Queue = queue.Queue()

    class Loop(common.EngineJobModal):
        status_label = "Viewfinder test"

        def job_finished(self, context, message):
            finished.append(message)
            return {"FINISHED"}

    def task(*, report, cancel):
        while True:
            item = feed.get()
            try:
                if isinstance(item, BaseException):
                    raise item
                if item.__class__.__name__ != "Progress":
                    return item
                report(item)
            finally:
                feed.task_done()

    loop = Loop()
    loop._worker = Worker(task).start()

    def send(item):
        feed.put(item)
        feed.join()  # the worker has handled it
        if not isinstance(item, vfmod("core.generate.shot").Progress):
            loop._worker.join(10)  # and posted its last message

    return loop, finished, send


def test_progress_then_outcome_ends_the_loop(vf, vfmod):
    Progress = vfmod("core.generate.shot").Progress
    loop, finished, send = _loop(vfmod)
    workspace = _Workspace()
    context = SimpleNamespace(workspace=workspace, window_manager=None)
    timer = SimpleNamespace(type="TIMER", value="NOTHING")

    assert loop.modal(context, timer) == {"RUNNING_MODAL"}  # nothing posted yet
    send(Progress("Shot", 2, 5, step=3, steps=8))
    assert loop.modal(context, timer) == {"RUNNING_MODAL"}
    assert workspace.texts == ["Viewfinder test: frame 2 of 5 — Esc to cancel"]
    outcome = object()
    send(outcome)
    assert loop.modal(context, timer) == {"FINISHED"}
    assert finished == [outcome] and workspace.texts[-1] is None  # status cleared


def test_esc_sets_cancel_and_other_events_pass_through(vf, vfmod):
    loop, finished, send = _loop(vfmod)
    workspace = _Workspace()
    context = SimpleNamespace(workspace=workspace, window_manager=None)
    assert loop.modal(context, SimpleNamespace(type="MOUSEMOVE", value="NOTHING")) == {"PASS_THROUGH"}
    assert not loop._worker.cancelled
    assert loop.modal(context, SimpleNamespace(type="ESC", value="PRESS")) == {"PASS_THROUGH"}
    assert loop._worker.cancelled
    assert workspace.texts == ["Viewfinder test: cancelling… — Esc to cancel"]
    # The worker's error reaches job_finished like an outcome, and the loop ends.
    error = RuntimeError("engine down")
    send(error)
    assert loop.modal(context, SimpleNamespace(type="TIMER", value="NOTHING")) == {"FINISHED"}
    assert finished == [error]


def test_finalize_and_sheet_use_the_shared_loop(vf, vfmod):
    common = vfmod("operators.common")
    finalize = vfmod("operators.finalize").VIEWFINDER_OT_finalize_take
    sheet = vfmod("operators.characters").VIEWFINDER_OT_make_reference_sheet
    Progress = vfmod("core.generate.shot").Progress
    assert issubclass(finalize, common.EngineJobModal) and issubclass(sheet, common.EngineJobModal)
    assert finalize.modal is common.EngineJobModal.modal and sheet.modal is common.EngineJobModal.modal
    p = Progress("Shot", 1, 3, step=4, steps=20)
    assert finalize.progress_text(None, p) == "frame 1 of 3, step 4/20"
    assert sheet.progress_text(None, p) == "view 1 of 3"
