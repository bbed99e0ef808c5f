"""One worker for background work (Flamenco's `bat/interface.py` pattern). Plain Python, no bpy.

A `Worker` owns its thread, its queue of typed messages and its cancel event. It gets
everything its task needs as arguments (a frozen `Prefs`, a job, a folder): it never
reads bpy data or an operator's attributes. The task runs as
``task(*args, report=..., cancel=...)``: it posts progress through ``report`` (`MsgProgress`,
or a typed message of its own such as `core.generate.shot.Progress`), looks
at ``cancel`` (a `threading.Event`) between bounded steps, and returns its result. The
worker then posts `MsgDone` with that result, or `MsgException` with what the task raised:
exactly one of them, always last.

The main thread drains the queue (`messages()`) from a modal timer; background mode
(farms, scripts) calls `run_here()`, which runs the task on the calling thread and leaves
the same messages on the same queue, so one message handler serves both paths.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MsgProgress:
    """How far the task is: ``fraction`` in 0..1 (None: unknown) and a line for the status bar."""

    fraction: float | None
    text: str


@dataclass(frozen=True)
class MsgDone:
    """The task returned ``result``; nothing follows."""

    result: Any


@dataclass(frozen=True)
class MsgException:
    """The task raised ``error``; nothing follows. ``cancelled``: it stopped because it was asked to."""

    error: BaseException
    cancelled: bool = False


Message = Any  # MsgProgress (or the task's own progress type), then MsgDone or MsgException


class Worker:
    """Runs one task on its own thread and reports through a queue of typed messages."""

    def __init__(self, task: Callable[..., Any], *args: Any, name: str = "viewfinder-worker") -> None:
        self._task = task
        self._args = args
        self._queue: queue.Queue[Message] = queue.Queue()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ended = False

    # -- any thread ------------------------------------------------------

    def start(self) -> Worker:
        self._thread.start()
        return self

    def run_here(self) -> Worker:
        """Run the task on the calling thread (background mode); its messages wait on the queue."""
        self._run()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def poll(self, timeout: float | None = None) -> Message | None:
        """The next message; waits up to ``timeout`` seconds (None: don't wait)."""
        try:
            return self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
        except queue.Empty:
            return None

    def messages(self) -> list[Message]:
        """Every message posted so far, oldest first (main thread, from a timer)."""
        found: list[Message] = []
        while (message := self.poll()) is not None:
            found.append(message)
        return found

    # -- the worker's own thread ------------------------------------------

    def _report(self, message: Any) -> None:
        self._queue.put(message)

    def _run(self) -> None:
        try:
            result = self._task(*self._args, report=self._report, cancel=self._cancel)
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the main thread
            log.debug("worker task failed: %s", traceback.format_exc())
            self._queue.put(MsgException(exc, cancelled=self._cancel.is_set()))
        else:
            self._queue.put(MsgDone(result))
