"""Engine operators: install the engine's environment, restart the engine.

Both run on a `core.worker.Worker` and return at once in the UI (common.WorkerModal
drains the worker's messages from a timer); in background mode they run the same task
on the calling thread and report through the same message handler.
"""

from __future__ import annotations

import logging
from typing import Any

import bpy

from ..core.client.install import install_task
from ..core.client.link import restart_task
from ..core.worker import Worker
from ..preferences import engine_venv_dir, get_prefs
from .common import WorkerModal, report

log = logging.getLogger(__name__)


class VIEWFINDER_OT_install_engine(WorkerModal, bpy.types.Operator):
    """Create a Python environment in the extension's user folder and install the engine (torch, diffusers…) into it"""

    bl_idname = "viewfinder.install_engine"
    bl_label = "Install Engine"
    bl_options = {"REGISTER"}

    status_label = "Installing engine"
    timer_s = 0.25

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not engine_venv_dir():
            cls.poll_message_set("Viewfinder must be installed as an extension to have a user folder")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        return self.run_worker_here(context, Worker(install_task, engine_venv_dir()))

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if self.runs_here():
            return self.execute(context)
        return self.start_worker(context, Worker(install_task, engine_venv_dir(), name="viewfinder-install"),
                                 "starting", progress_bar=True)

    def progress_text(self, progress: Any) -> str:
        log.info("%3d%% %s", int((progress.fraction or 0.0) * 100), progress.text)
        return f"{int((progress.fraction or 0.0) * 100)}%: {progress.text[:80]}"

    def worker_done(self, context: bpy.types.Context, result: Any) -> set[str]:
        report(self, "INFO", f"Engine installed ({result}): Generate will start it")
        return {"FINISHED"}

    def worker_failed(self, context: bpy.types.Context, error: BaseException) -> set[str]:
        report(self, "ERROR", f"Engine install stopped: {error}")
        return {"CANCELLED"}


class VIEWFINDER_OT_restart_engine(WorkerModal, bpy.types.Operator):
    """Stop the local engine (if any) and connect again, starting it afresh"""

    bl_idname = "viewfinder.restart_engine"
    bl_label = "Restart Engine"
    bl_options = {"REGISTER"}

    status_label = "Restarting engine"

    def execute(self, context: bpy.types.Context) -> set[str]:
        return self.run_worker_here(context, Worker(restart_task, get_prefs(context)))

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if self.runs_here():
            return self.execute(context)
        return self.start_worker(context, Worker(restart_task, get_prefs(context), name="viewfinder-restart"),
                                 "stopping the engine")

    def worker_done(self, context: bpy.types.Context, result: Any) -> set[str]:
        client, health = result
        report(self, "INFO", f"Engine ready on {health.get('device', '?')} at {client.base_url}")
        return {"FINISHED"}

    def worker_failed(self, context: bpy.types.Context, error: BaseException) -> set[str]:
        report(self, "ERROR", str(error) or error.__class__.__name__)
        return {"CANCELLED"}


classes = (VIEWFINDER_OT_install_engine, VIEWFINDER_OT_restart_engine)
register, unregister = bpy.utils.register_classes_factory(classes)
