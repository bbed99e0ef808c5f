"""Test-wide setup: a throwaway HOME, so Blender never touches the real user folder.

This runs before any test module imports bpy (Blender reads HOME once, at import).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_home = Path(tempfile.mkdtemp(prefix="viewfinder-test-home-"))
os.environ["HOME"] = str(_home)
os.environ["XDG_CONFIG_HOME"] = str(_home / ".config")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One torch thread per engine process: on a 2-core machine shared by pytest, Blender
# and the engine, OpenMP's spinning threads otherwise slow tiny models down 10-25x
# (measured: 12-40 s against 1.6 s for 30 steps at 64x64).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests start their own engines; never a user's.
for _var in ("VIEWFINDER_ENGINE_URL", "VIEWFINDER_ENGINE_TOKEN"):
    os.environ.pop(_var, None)

if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))
