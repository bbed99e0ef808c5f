"""Model-aware routing on Ray Serve's own model multiplexing, not a router of our own.

A studio's artists use different checkpoints and LoRAs, and a replica that loads a model per
job spends more time loading than generating. So every unit names its pipeline: the ingress
sends it with ``handle.options(multiplexed_model_id=model_id(job.key))``, and a worker replica
loads pipelines only through ``serve.multiplexed`` (``ServePipelines``). Serve's router then
sends a unit to a free replica that already holds its model, else to the replica holding the
fewest models; each replica keeps at most ``max_pipelines`` and unloads the least recently used.

``model_id`` imports no ray (the ingress's planning is tested without it); ``ServePipelines``
runs only inside a worker replica.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import sys
import threading
from collections.abc import Callable, Hashable
from typing import Any

from ..models.pipelines import PipelineCache

logger = logging.getLogger(__name__)


def model_id(key: Hashable) -> str:
    """The multiplexed model id of a pipeline key (a ``PipelineKey`` or ``VideoKey``): the same
    string on the ingress, which routes by it, and on the replica, which loads by it."""
    fields = dataclasses.asdict(key) if dataclasses.is_dataclass(key) and not isinstance(key, type) \
        else {"key": repr(key)}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
    return f"{type(key).__name__.lower()}-{digest[:16]}"


def free_memory() -> None:
    """After a pipeline is unloaded: collect it now, and give the GPU's cached blocks back."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")  # the stand-in model never imports torch
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class LoadedPipeline:
    """What Serve's multiplexer holds for one model id; freed when it evicts it."""

    def __init__(self, name: str, models: Any, on_unload: Callable[[str], None]) -> None:
        self.name, self.models, self._on_unload = name, models, on_unload

    def __del__(self) -> None:
        # Serve calls this when it unloads the pipeline (least recently used, past the cap).
        if self.models is not None:
            self.models = None
            self._on_unload(self.name)
            free_memory()


class ServePipelines(PipelineCache):
    """A worker replica's loaded pipelines, held by Serve's model multiplexer.

    The replica's JobManager asks for a pipeline on its worker thread (``get``, as with a
    ``PipelineCache``); the load runs through ``self.multiplexed`` on the replica's event loop,
    so Serve knows which models the replica holds and routes units by them.
    """

    def __init__(self, capacity: int) -> None:
        from ray import serve

        super().__init__(capacity)
        self.loop: asyncio.AbstractEventLoop | None = None  # the replica's; set by each unit
        self._loaders: dict[str, Callable[[], Any]] = {}
        self._lock = threading.Lock()
        self.held: list[str] = []  # the multiplexer's models, least recently used first
        self._pipelines: dict[str, LoadedPipeline] = {}
        self.loads = 0

        async def load(name: str) -> LoadedPipeline:
            """Serve's loader: runs the waiting unit's own loader off the event loop."""
            with self._lock:
                loader = self._loaders[name]
            models = await asyncio.to_thread(loader)
            pipeline = LoadedPipeline(name, models, self._unloaded)
            with self._lock:
                self.loads += 1
                self.held.append(name)
                self._pipelines[name] = pipeline
            return pipeline

        # A plain function, not a bound method: Serve keeps its cache on the function object.
        self.multiplexed = serve.multiplexed(max_num_models_per_replica=self.capacity)(load)

    def _unloaded(self, name: str) -> None:
        with self._lock:
            if name in self.held:
                self.held.remove(name)
            self._pipelines.pop(name, None)
        logger.info("Unloaded pipeline %s (least recently used; %d kept per replica)", name, self.capacity)

    def get(self, key: Hashable, loader: Callable[[], Any]) -> tuple[Any, bool]:
        """Worker thread: (models, reused) for ``key``, loaded through Serve's multiplexer."""
        assert self.loop is not None, "a unit sets the replica's event loop before its job runs"
        name = model_id(key)
        with self._lock:
            self._loaders[name] = loader
            before = self.loads
        held: LoadedPipeline = asyncio.run_coroutine_threadsafe(self.multiplexed(name), self.loop).result()
        with self._lock:
            self._loaders.pop(name, None)
            loaded = self.loads > before
            if name in self.held:
                self.held.remove(name)
                self.held.append(name)
        if held.models is None:  # dropped after running out of memory: load it again in place
            held.models = loader()
            loaded = True
        return held.models, not loaded

    def drop(self, key: Hashable) -> None:
        """After running out of memory: free the pipeline now; the next job loads it again."""
        name = model_id(key)
        with self._lock:
            pipeline = self._pipelines.get(name)
        if pipeline is not None:
            pipeline.models = None  # the multiplexer keeps the entry; the next ``get`` loads into it
        logger.info("Dropped pipeline %s after running out of memory", name)
        free_memory()
