"""Add-on preferences: which engine to use, and where frames go.

`get_prefs` (main thread) reads them into the frozen `core.prefs.Prefs` that workers get.
"""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from .core.client.link import environment_overrides
from .core.prefs import Prefs


class VIEWFINDER_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    engine_mode: EnumProperty(
        name="Engine",
        items=[
            ("LOCAL", "Local", "Start the engine on this computer as a separate process"),
            ("REMOTE", "Remote", "Connect to an engine already running on another computer"),
        ],
        default="LOCAL",
    )
    python_path: StringProperty(
        name="Engine Python",
        subtype="FILE_PATH",
        description=(
            "Python interpreter with the engine's requirements (torch, diffusers). "
            "Empty: the one made by Install Engine"
        ),
    )
    remote_url: StringProperty(name="URL", description="Remote engine, e.g. http://gpu-box:8765")
    remote_token: StringProperty(name="Token", subtype="PASSWORD", description="Remote engine's access token")
    output_dir: StringProperty(
        name="Output Folder",
        subtype="DIR_PATH",
        description="Where control maps and takes go. Empty: a 'viewfinder' folder next to the .blend",
    )
    device: EnumProperty(
        name="Device",
        items=[
            ("auto", "Automatic", "CUDA, then Apple MPS, then CPU"),
            ("cuda", "CUDA", "NVIDIA GPU, half precision"),
            ("mps", "Apple MPS", "Apple Silicon GPU"),
            ("cpu", "CPU", "Slow, but works everywhere"),
        ],
        default="auto",
    )
    attention_slicing: BoolProperty(name="Attention Slicing", description="Less GPU memory, a little slower")
    cpu_offload: BoolProperty(name="CPU Offload", description="Much less GPU memory, slower: for small GPUs")
    compile_models: BoolProperty(
        name="Compile (torch.compile)",
        description="Faster frames on a GPU after a warm-up of a minute or more per image size (shown in the job's "
        "timings); eager mode if compiling fails. Changing it restarts the local engine at the next job",
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.prop(self, "engine_mode", expand=True)
        box = layout.box()
        if self.engine_mode == "LOCAL":
            box.prop(self, "python_path")
            row = box.row()
            row.operator("viewfinder.install_engine", icon="IMPORT")
            row.operator("viewfinder.restart_engine", icon="FILE_REFRESH")
            box.prop(self, "device")
            box.prop(self, "attention_slicing")
            box.prop(self, "cpu_offload")
            box.prop(self, "compile_models")
        else:
            box.prop(self, "remote_url")
            box.prop(self, "remote_token")
            box.operator("viewfinder.restart_engine", text="Connect", icon="URL")
        for var in environment_overrides():
            layout.label(text=f"{var} is set and overrides these settings", icon="INFO")
        layout.prop(self, "output_dir")


def engine_venv_dir() -> str:
    """The extension's user folder for the engine's virtual environment (main thread)."""
    try:
        return bpy.utils.extension_path_user(__package__, path="engine-venv", create=False)
    except (ValueError, AttributeError):  # not running as an extension
        return ""


def get_prefs(context: bpy.types.Context | None = None) -> Prefs:
    """The preferences as plain data; defaults when the add-on is not enabled as an extension."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    if addon is None or addon.preferences is None:
        return Prefs(engine_venv=engine_venv_dir())
    p = addon.preferences
    return Prefs(
        engine_mode=p.engine_mode,
        python_path=bpy.path.abspath(p.python_path) if p.python_path else "",
        remote_url=p.remote_url,
        remote_token=p.remote_token,
        output_dir=bpy.path.abspath(p.output_dir) if p.output_dir else "",
        device=p.device,
        attention_slicing=p.attention_slicing,
        cpu_offload=p.cpu_offload,
        compile_models=p.compile_models,
        engine_venv=engine_venv_dir(),
    )


classes = (VIEWFINDER_AP_preferences,)
register, unregister = bpy.utils.register_classes_factory(classes)
