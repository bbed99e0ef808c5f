"""Issue 11, the add-on side: a frame that arrives damaged is never counted as done, and a
take folder that is not a take (wrong types in take.json) does not break Generate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import bpy
import pytest
from blender_scenes import needs_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_generate import build_film, take_strips  # noqa: E402 - the same film as the Generate tests

pytestmark = needs_engine()


class _HalfResponse:
    """A frame response whose body stops half way, as a broken connection or disk would leave it."""

    def __init__(self, response):
        import io

        data = response.raw.read()
        self.raw = io.BytesIO(data[: len(data) // 2])  # read1/read as urllib3's raw body
        self.headers: dict[str, str] = {}
        response.close()

    def close(self):
        pass


def test_truncated_frame_is_not_counted_and_the_take_is_not_complete(tmp_path, tiny_models, monkeypatch, vfmod):
    scene = build_film(tmp_path, tiny_models)
    client_mod = vfmod("core.client.http")
    original = client_mod.EngineClient._request

    def truncating(self, method, path, **kwargs):
        response = original(self, method, path, **kwargs)
        if method == "GET" and path.endswith("/frames/2"):
            return _HalfResponse(response)
        return response

    monkeypatch.setattr(client_mod.EngineClient, "_request", truncating)
    with pytest.raises(RuntimeError, match="Frame 2 .*could not be opened"):
        bpy.ops.viewfinder.generate(shot="Wide")
    assert take_strips(scene) == []
    (take,) = [p for p in (tmp_path / "viewfinder").rglob("take.json")]
    info = json.loads(take.read_text())
    assert info["complete"] is False and 2 not in info["frames_done"]
    assert not (take.parent / "0002.png").exists()
    assert not list(take.parent.glob(".tmp-*"))
    # Fetched whole again, the same take completes.
    monkeypatch.setattr(client_mod.EngineClient, "_request", original)
    assert bpy.ops.viewfinder.generate(shot="Wide") == {"FINISHED"}
    info = json.loads(take.read_text())
    assert info["complete"] is True and 2 in info["frames_done"]


def test_take_json_with_wrong_types_is_ignored(tmp_path, tiny_models):
    scene = build_film(tmp_path, tiny_models)
    takes_dir = tmp_path / "viewfinder" / "Wide" / "takes"
    (takes_dir / "001").mkdir(parents=True)
    (takes_dir / "001" / "take.json").write_text(json.dumps({"complete": "yes", "frames_total": "1-3",
                                                             "request_hash": 7}))
    (takes_dir / "\u0661\u0662").mkdir()  # Arabic-Indic "12": not a take folder
    assert bpy.ops.viewfinder.generate(shot="Wide") == {"FINISHED"}
    (strip,) = take_strips(scene)
    assert Path(bpy.path.abspath(strip["viewfinder_take"])).name == "002"
