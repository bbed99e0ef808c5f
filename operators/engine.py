"""Engine operators: install the engine's environment, restart the engine."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import bpy

from ..core import engine_install, engine_link
from ..core.engine_process import shutdown_engine
from ..preferences import engine_venv_dir, get_prefs
from .common import report

log = logging.getLogger(__name__)


class VIEWFINDER_OT_install_engine(bpy.types.Operator):
    """Create a Python environment in the extension's user folder and install the engine (torch, diffusers…) into it"""

    bl_idname = "viewfinder.install_engine"
    bl_label = "Install Engine"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not engine_venv_dir():
            cls.poll_message_set("Viewfinder must be installed as an extension to have a user folder")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            for step in engine_install.install_engine(engine_venv_dir()):
                log.info("%3d%% %s", int(step.fraction * 100), step.line)
        except (engine_install.InstallFailed, engine_install.InstallCancelled, OSError) as exc:
            report(self, "ERROR", f"Engine install failed: {exc}")
            return {"CANCELLED"}
        report(self, "INFO", "Engine installed")
        return {"FINISHED"}

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if bpy.app.background:
            return self.execute(context)
        self._messages: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        venv = engine_venv_dir()
        self._thread = threading.Thread(target=self._work, args=(venv,), daemon=True, name="viewfinder-install")
        self._thread.start()
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.25, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 100)
        return {"RUNNING_MODAL"}

    def _work(self, venv: str) -> None:
        """Worker thread: pip, never bpy."""
        try:
            for step in engine_install.install_engine(venv, cancel=self._cancel):
                self._messages.put(step)
            self._messages.put("done")
        except Exception as exc:
            self._messages.put(exc)

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if event.type == "ESC":
            self._cancel.set()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        finished: Any = None
        while not self._messages.empty():
            message = self._messages.get_nowait()
            if isinstance(message, engine_install.InstallProgress):
                context.window_manager.progress_update(int(message.fraction * 100))
                if context.workspace is not None:
                    context.workspace.status_text_set(f"Installing engine {int(message.fraction * 100)}%: {message.line[:80]} — Esc to cancel")
            else:
                finished = message
        if finished is None:
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        context.window_manager.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        if isinstance(finished, Exception):
            report(self, "ERROR", f"Engine install stopped: {finished}")
            return {"CANCELLED"}
        report(self, "INFO", "Engine installed: Generate will start it")
        return {"FINISHED"}


class VIEWFINDER_OT_restart_engine(bpy.types.Operator):
    """Stop the local engine (if any) and connect again, starting it afresh"""

    bl_idname = "viewfinder.restart_engine"
    bl_label = "Restart Engine"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        shutdown_engine()
        try:
            client = engine_link.connect(get_prefs(context))
            health = client.health()
        except Exception as exc:
            report(self, "ERROR", str(exc))
            return {"CANCELLED"}
        report(self, "INFO", f"Engine ready on {health.get('device', '?')} at {client.base_url}")
        return {"FINISHED"}


classes = (VIEWFINDER_OT_install_engine, VIEWFINDER_OT_restart_engine)
register, unregister = bpy.utils.register_classes_factory(classes)
