"""Finished frames encoded as PNG and written to the cache on a thread of their own.

The worker thread hands a frame over and goes on with the next batch's denoising while
the frame is encoded and written (issue 15): on a GPU the encode no longer sits between
two batches. A frame counts as done (``job.done``) only once it is on disk, so a client
never fetches a frame that is not there; until then ``pending`` returns its pixels (FLOW
reads the previous frame back). ``wait`` blocks until everything handed over is written
and raises the first write error, so a job ends only after its frames are on disk.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from ..models.codecs import encode_png

if TYPE_CHECKING:
    from ..storage import Storage

logger = logging.getLogger(__name__)


class FrameWriter:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._queue: queue.Queue[tuple[Any, int, str, np.ndarray] | None] = queue.Queue()
        self._pending: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def put(self, job: Any, number: int, key: str, pixels: np.ndarray) -> None:
        """Worker thread: write ``pixels`` (H x W x 3 uint8) as frame ``number`` of ``job`` under ``key``."""
        with self._lock:
            self._pending[key] = pixels
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vf-frame-writer", daemon=True)
                self._thread.start()
        self._queue.put((job, number, key, pixels))

    def pending(self, key: str) -> np.ndarray | None:
        """The pixels of a frame handed over and not yet on disk, else None."""
        with self._lock:
            return self._pending.get(key)

    def wait(self) -> None:
        """Block until every frame handed over is written; raises the first write error since the last wait."""
        self._queue.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        from PIL import Image

        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                job, number, key, pixels = item
                try:
                    self.storage.put_frame(key, encode_png(Image.fromarray(pixels)))
                    job.done[number] = key
                except Exception as exc:  # noqa: BLE001 - reported by wait() on the worker thread
                    logger.warning("Frame %d of job %s could not be written: %s", number, job.id, exc)
                    self._error = self._error or exc
                with self._lock:
                    # Frames with equal keys (equal inputs) may be in flight together: the last one clears it.
                    if self._pending.get(key) is pixels:
                        del self._pending[key]
            finally:
                self._queue.task_done()
