"""Every listed error gives its message, over HTTP, from a real engine process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from engine_testlib import OOM_FRAME, depth_png, make_job, pose_png, read_png, wait_for

pytestmark = pytest.mark.engine


@pytest.fixture()
def frame(client: Any) -> dict[str, Any]:
    return {"frame": 1, "depth": client.upload_blob(depth_png(0.5)), "pose": client.upload_blob(pose_png())}


def submit_error(core: Any, client: Any, job: dict[str, Any]) -> Any:
    with pytest.raises(core.client.EngineError) as info:
        client.submit(job)
    return info.value


def test_unknown_hub_model_names_it_and_how_to_get_it(client: Any, tiny_models: dict[str, str],
                                                      frame: dict[str, Any]) -> None:
    job = make_job(tiny_models, [frame])
    job["models"]["base"] = "nobody-here/no-such-model"
    status = wait_for(client, client.submit(job))
    assert status["status"] == "failed"
    error = status["error"]
    assert error["code"] == "model_unavailable" and error["field"] == "models.base"
    assert "nobody-here/no-such-model" in error["message"]
    assert "hf download nobody-here/no-such-model" in error["message"]
    # The engine is still up and runs the next job.
    assert wait_for(client, client.submit(make_job(tiny_models, [frame], seed=3)))["status"] == "done"


@pytest.mark.parametrize("value, code", [
    ("/no/such/folder", "model_unavailable"),
    ("./models/missing.safetensors", "model_unavailable"),
    ("/tmp/model.ckpt", "unsafe_model_format"),
    ("weights/pytorch_model.bin", "unsafe_model_format"),
])
def test_bad_model_paths_are_refused_at_submit(core: Any, client: Any, tiny_models: dict[str, str],
                                               frame: dict[str, Any], value: str, code: str) -> None:
    job = make_job(tiny_models, [frame])
    job["models"]["controlnet_depth"] = value
    error = submit_error(core, client, job)
    assert error.status == 400 and error.code == code and error.field == "models.controlnet_depth"
    assert value in error.message
    if code == "unsafe_model_format":
        assert ".safetensors" in error.message


def test_pickle_lora_is_refused(core: Any, client: Any, tiny_models: dict[str, str], frame: dict[str, Any]) -> None:
    job = make_job(tiny_models, [frame])
    job["models"]["lora"] = "/loras/style.pt"
    error = submit_error(core, client, job)
    assert error.code == "unsafe_model_format" and error.field == "models.lora"


@pytest.mark.parametrize("change, field", [
    ({"steps": "many"}, "steps"),
    ({"width": 65}, "width"),
    ({"batch_size": 0}, "batch_size"),
    ({"frames": []}, "frames"),
    ({"colour": "red"}, "colour"),
    ({"coherence": {"mode": "FLOWS"}}, "coherence.mode"),
    ({"coherence": {"mode": "FLOW", "strength": 2.0}}, "coherence.strength"),
    ({"frames": [{"frame": 1, "depth": "not-a-hash"}]}, "frames[0].depth"),
    ({"frames": [{"frame": 1, "depth": "ab" * 32}]}, "frames[0].depth"),
    ({"control_start": 0.8, "control_end": 0.2}, None),
])
def test_malformed_request_names_the_field(core: Any, client: Any, tiny_models: dict[str, str],
                                           frame: dict[str, Any], change: dict[str, Any], field: str | None) -> None:
    error = submit_error(core, client, {**make_job(tiny_models, [frame]), **change})
    assert 400 <= error.status < 500
    if field is None:
        assert "control_start" in error.message
    else:
        assert error.field == field and field in error.message


def test_invalid_json_and_bad_blob(engine: Any) -> None:
    headers = {"Authorization": f"Bearer {engine.token}"}
    answer = requests.post(engine.url + "/jobs", data=b"{not json", headers={**headers, "Content-Type":
                                                                                 "application/json"}, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_json"
    answer = requests.put(engine.url + "/blobs/" + "0" * 64, data=b"png bytes", headers=headers, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "hash_mismatch"


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_wrong_or_missing_token_is_401(core: Any, engine: Any, token: str | None) -> None:
    client = core.client.EngineClient(engine.url, token)
    assert client.health()["status"] == "ok"  # /health needs no token: used to wait for start-up
    for call in (lambda: client.upload_blob(b"x"), lambda: client.status("abc"),
                 lambda: client.submit({"frames": []})):
        with pytest.raises(core.client.EngineError) as info:
            call()
        assert info.value.status == 401 and info.value.code == "unauthorized"
        assert "token" in info.value.message


def test_unknown_job_and_frame_are_404(core: Any, client: Any, tiny_models: dict[str, str],
                                       frame: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(core.client.EngineError) as info:
        client.status("no-such-job")
    assert info.value.status == 404 and info.value.code == "unknown_job"
    done = wait_for(client, client.submit(make_job(tiny_models, [frame], seed=11)))
    with pytest.raises(core.client.EngineError) as info:
        client.fetch_frame(done["id"], 77, str(tmp_path / "x.png"))
    assert info.value.code == "unknown_frame"
    assert not (tmp_path / "x.png").exists()


def test_out_of_memory_keeps_frames_and_engine(client: Any, tiny_models: dict[str, str], tmp_path: Path) -> None:
    frames = [{"frame": n, "depth": client.upload_blob(depth_png(0.1 * i)), "pose": None}
              for i, n in enumerate((1, 2, OOM_FRAME))]
    status = wait_for(client, client.submit(make_job(tiny_models, frames, seed=5, batch_size=1)))
    assert status["status"] == "failed"
    assert status["error"]["code"] == "out_of_memory"
    assert "batch size" in status["error"]["message"] and "resolution" in status["error"]["message"]
    assert status["frames"] == [1, 2]
    assert read_png(client.fetch_frame(status["id"], 2, str(tmp_path / "2.png"))).std() > 1.0
    nxt = wait_for(client, client.submit(make_job(tiny_models, frames[:1], seed=6)))
    assert nxt["status"] == "done"


def test_unreachable_engine_message(core: Any) -> None:
    url = f"http://127.0.0.1:{core.process.free_port()}"
    with pytest.raises(core.client.EngineError) as info:
        core.client.EngineClient(url, timeout=2).health()
    assert info.value.code == "unreachable"
    assert url in info.value.message and "python -m engine serve" in info.value.message
