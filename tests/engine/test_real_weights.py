"""Real models from the Hub (the defaults): skipped unless VIEWFINDER_REAL_WEIGHTS=1.

Needs the internet once (or a filled Hugging Face cache) and a few GB of disk; on a GPU:
    VIEWFINDER_REAL_WEIGHTS=1 HF_HUB_OFFLINE=0 .venv-engine/bin/python -m pytest tests/engine -m slow
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from engine_testlib import depth_png, pose_png, read_png, start_local_engine, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("VIEWFINDER_REAL_WEIGHTS") != "1", reason="set VIEWFINDER_REAL_WEIGHTS=1"),
]


def test_default_models_generate(core: Any, tmp_path: Path) -> None:
    engine = start_local_engine(core, tmp_path / "data", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "0"))
    try:
        client = engine.client(timeout=60)
        frames = [{"frame": 1, "depth": client.upload_blob(depth_png(0.5, size=512)),
                   "pose": client.upload_blob(pose_png(size=512))}]
        job = {"prompt": "a man standing in a street, film still", "seed": 1, "steps": 20, "width": 512,
               "height": 512, "frames": frames}  # default models, device auto
        status = wait_for(client, client.submit(job), timeout=3600)
        assert status["status"] == "done", status
        assert read_png(client.fetch_frame(status["id"], 1, str(tmp_path / "1.png"))).std() > 10
    finally:
        engine.stop()
