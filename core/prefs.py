"""`Prefs`: a frozen, plain copy of the add-on preferences, safe to hand to worker threads.

Plain Python (no bpy). `preferences.get_prefs` (main thread) reads the Blender-side
preferences into one; everything in `core/` takes it as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prefs:
    """A plain copy of the preferences, safe to hand to worker threads."""

    engine_mode: str = "LOCAL"
    python_path: str = ""
    remote_url: str = ""
    remote_token: str = ""
    output_dir: str = ""
    device: str = "auto"
    attention_slicing: bool = False
    cpu_offload: bool = False
    compile_models: bool = False  # the engine compiles its UNet and ControlNets (torch.compile)
    engine_venv: str = ""  # where Install Engine puts its virtual environment
