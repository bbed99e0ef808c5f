"""From the add-on's preferences to a running engine. Any thread (no bpy)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..worker import MsgProgress
from .http import EngineClient
from .install import venv_python
from .process import get_engine, shutdown_engine

if TYPE_CHECKING:
    from ..prefs import Prefs


def engine_python(prefs: Prefs) -> str:
    """The preference's interpreter, else the one Install Engine made (if it exists)."""
    if prefs.python_path:
        return prefs.python_path
    if prefs.engine_venv:
        candidate = venv_python(prefs.engine_venv)
        if candidate.is_file():
            return str(candidate)
    return ""


def connect(prefs: Prefs) -> EngineClient:
    """A client for the engine the preferences (or VIEWFINDER_ENGINE_* variables) name.

    Starts the local engine when needed, which blocks until it is healthy:
    call from a worker thread in the UI. Raises EngineError with a message
    that says what to do.
    """
    remote = prefs.remote_url if prefs.engine_mode == "REMOTE" else None
    token = prefs.remote_token if prefs.engine_mode == "REMOTE" else None
    local = {"compile_models": True} if getattr(prefs, "compile_models", False) else {}
    engine = get_engine(url=remote, token=token, python=engine_python(prefs), **local)
    return engine.client()


def environment_overrides() -> list[str]:
    """The VIEWFINDER_ENGINE_* variables that are set and take precedence over the preferences."""
    return [v for v in ("VIEWFINDER_ENGINE_URL", "VIEWFINDER_ENGINE_PYTHON") if os.environ.get(v)]


def connect_task(prefs: Prefs, *, report: Callable[[Any], None], cancel: threading.Event) -> EngineClient:
    """A `core.worker.Worker` task: connect (starting the local engine if needed) and check it answers."""
    report(MsgProgress(None, "starting the engine" if prefs.engine_mode == "LOCAL" else "connecting to the engine"))
    client = connect(prefs)
    client.health()
    return client


def restart_task(prefs: Prefs, *, report: Callable[[Any], None], cancel: threading.Event) -> tuple[EngineClient, dict[str, Any]]:
    """A `core.worker.Worker` task: stop the local engine, connect again; (client, its /health answer)."""
    shutdown_engine()
    report(MsgProgress(None, "starting the engine" if prefs.engine_mode == "LOCAL" else "connecting to the engine"))
    client = connect(prefs)
    return client, client.health()
