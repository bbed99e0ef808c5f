"""VIDEO jobs end to end over HTTP with a tiny random-weight Wan VACE and AnimateDiff motion adapter
(written by ``make-tiny-models``, loaded by the real loader): windows, cancel and resume of a window,
seam warp error, bad input (short shot, rounded size, out of memory, missing pipeline)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_testlib import OOM_FRAME, read_png, wait_for
from PIL import Image

from engine.metrics.take import warp_error
from engine.models.windows import plan_windows

SIZE = 64
SPEED = 1  # the backdrop pans this many pixels a frame to the right


def depth_map(n: int, size: int = SIZE) -> np.ndarray:
    """uint16 as stored: a textured backdrop panning right (every pixel has geometry)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    v = 0.3 + 0.2 * np.sin((x - SPEED * n) / 3.0) * np.cos(y / 4.0)
    return (1 + np.rint(v * 65534)).astype(np.uint16)


def flow_map(size: int = SIZE) -> np.ndarray:
    flow = np.zeros((size, size, 2), np.float32)
    flow[..., 0] = -SPEED
    return flow


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def shot(client: Any, numbers: range, size: int = SIZE) -> list[dict[str, Any]]:
    flow = client.upload_blob(npy(flow_map(size)))
    return [{"frame": n, "depth": client.upload_blob(png(depth_map(n, size))), "pose": None, "flow": flow}
            for n in numbers]


def video_job(models: dict[str, str], frames: list[dict[str, Any]], size: int = SIZE, **video: Any) -> dict[str, Any]:
    return {
        "shot": "video", "prompt": "a street at dusk", "negative_prompt": "blurry", "seed": 7, "steps": 2,
        "guidance_scale": 5.0, "width": size, "height": size, "device": "cpu", "generator": "VIDEO",
        "video": {"model": models["wan_vace"], "window": 9, "overlap": 2, **video}, "frames": frames,
    }


def fetch(client: Any, job_id: str, numbers: list[int], folder: Path) -> dict[int, np.ndarray]:
    out = {}
    for n in numbers:
        path = folder / f"{n:04d}.png"
        client.fetch_frame(job_id, n, path)
        out[n] = read_png(path)
    return out


def test_long_shot_runs_in_chained_windows_one_frame_per_timeline_frame(client: Any, tiny_models: dict[str, str],
                                                                      tmp_path: Path) -> None:
    numbers = range(101, 131)  # 30 frames: windows of 9 overlapping by 2 -> 4 windows
    job = client.submit(video_job(tiny_models, shot(client, numbers)))
    status = wait_for(client, job)
    assert status["status"] == "done", status
    assert status["frames"] == list(numbers) and status["frames_total"] == 30
    assert status["generator"] == "VIDEO" and status["detail"]["windows"] == 4
    assert status["detail"]["window_frames"] == [122, 130]  # the last window ends on the last frame
    frames = fetch(client, job, list(numbers), tmp_path)
    assert {f.shape for f in frames.values()} == {(SIZE, SIZE, 3)}
    # Random weights still draw different pictures for different frames.
    assert np.abs(frames[101].astype(int) - frames[130].astype(int)).mean() > 1.0
    # Same request again: every window comes from the cache, nothing runs.
    again = client.status(client.submit(video_job(tiny_models, shot(client, numbers))))
    assert again["status"] == "done" and again["cached_frames"] == list(numbers)


def test_seam_frames_warp_no_worse_than_frames_inside_a_window(client: Any, tiny_models: dict[str, str],
                                                               tmp_path: Path) -> None:
    numbers = list(range(1, 31))
    plan = plan_windows(len(numbers), 9, 2)
    seams = {numbers[w.new_start] for w in plan.windows[1:]}
    errors: dict[str, dict[int, float]] = {}
    for blend in (4, 0):
        job = client.submit(video_job(tiny_models, shot(client, range(1, 31)), blend_frames=blend))
        assert wait_for(client, job)["status"] == "done"
        frames = fetch(client, job, numbers, tmp_path / f"blend{blend}")
        errors[str(blend)] = {
            n: warp_error(frames[n - 1], frames[n], flow_map(), depth_map(n - 1), depth_map(n))[0]
            for n in numbers[1:]
        }
    with_blend = errors["4"]
    seam = float(np.mean([with_blend[n] for n in seams]))
    inside = float(np.mean([e for n, e in with_blend.items() if n not in seams]))
    unblended_seam = float(np.mean([errors["0"][n] for n in seams]))
    print(f"warp error: seam {seam:.2f}, inside windows {inside:.2f}, seam without flow blending {unblended_seam:.2f}")
    assert seam <= inside
    assert seam < unblended_seam  # the blending along the flow is what makes the seam steady


def test_cancelled_window_resumes_after_the_last_finished_window(client: Any, tiny_models: dict[str, str],
                                                                 tmp_path: Path) -> None:
    numbers = range(201, 221)  # 20 frames: windows [0,9) [7,16) [11,20)
    body = {**video_job(tiny_models, shot(client, numbers)), "steps": 40}
    job = client.submit(body)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = client.status(job)
        if status["frames_done"] >= 9 and status["step"] >= 1:
            break
        time.sleep(0.02)
    client.cancel(job)
    cancelled = wait_for(client, job)
    assert cancelled["status"] == "cancelled", cancelled
    # Whole windows only: the first (9 frames) finished, the second was stopped within a step.
    assert cancelled["frames"] == list(range(201, 210))
    resumed = client.submit(body)
    status = wait_for(client, resumed)
    assert status["status"] == "done" and status["cached_frames"] == list(range(201, 210))
    assert status["frames"] == list(numbers)


def test_short_shot_is_padded_and_size_rounded_with_messages(client: Any, tiny_models: dict[str, str],
                                                             tmp_path: Path) -> None:
    # 72 is a multiple of 8 but not of 16: generated at 80 and cropped back; 3 frames < 5: padded.
    job = client.submit(video_job(tiny_models, shot(client, range(1, 4), 72), size=72, flow_shift=5.0))
    status = wait_for(client, job)
    assert status["status"] == "done" and status["frames"] == [1, 2, 3]
    text = " ".join(status["messages"])
    assert "fewer than the model's minimum of 5: padded to 5" in text
    assert "generating at 80x80 and cropping back to 72x72" in text
    assert fetch(client, job, [3], tmp_path)[3].shape == (72, 72, 3)


def test_out_of_memory_mid_window_keeps_finished_windows(client: Any, tiny_models: dict[str, str]) -> None:
    numbers = range(OOM_FRAME - 9, OOM_FRAME + 6)  # the second window's first new frame runs out of memory
    job = client.submit(video_job(tiny_models, shot(client, numbers)))
    status = wait_for(client, job)
    assert status["status"] == "failed" and status["error"]["code"] == "out_of_memory"
    message = status["error"]["message"]
    assert "CPU offload" in message and "Wan-AI/Wan2.1-VACE-1.3B-diffusers" in message
    assert "Finished windows are kept" in message
    assert status["frames"] == list(range(OOM_FRAME - 9, OOM_FRAME))
    assert client.health()["status"] == "ok"


def test_animatediff_motion_adapter_runs_windows(client: Any, tiny_models: dict[str, str]) -> None:
    numbers = range(1, 31)  # windows of 20 (> 16: diffusers' sliding contexts inside a window)
    body = video_job(tiny_models, shot(client, numbers, 64), size=64, pipeline="ANIMATEDIFF",
                     motion_adapter=tiny_models["motion_adapter"], window=20, overlap=4)
    body["models"] = {"base": tiny_models["base"], "controlnet_depth": tiny_models["depth"], "controlnet_pose": None}
    status = wait_for(client, client.submit(body))
    assert status["status"] == "done", status
    assert status["frames"] == list(numbers) and status["detail"]["windows"] == 2


def test_bad_video_requests_name_the_field(client: Any, core: Any, tiny_models: dict[str, str]) -> None:
    engine_error = core.client.EngineError
    frames = shot(client, range(1, 6))
    with pytest.raises(engine_error) as info:
        client.submit(video_job(tiny_models, frames, model=str(Path(tiny_models["wan_vace"]) / "nope")))
    assert "video.model" in str(info.value)
    single = Path(tiny_models["lora"])  # any .safetensors file
    with pytest.raises(engine_error) as info:
        client.submit(video_job(tiny_models, frames, model=str(single)))
    assert "video.model" in str(info.value) and "diffusers folder or Hub id" in str(info.value)
    with pytest.raises(engine_error) as info:
        client.submit(video_job(tiny_models, frames, references=["0" * 64]))
    assert "video.references[0]" in str(info.value) and "upload" in str(info.value)


def test_missing_pipeline_class_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from engine.contract.errors import BadRequest
    from engine.models import video
    from engine.models.video import check_available

    monkeypatch.setattr(video, "_available", {})
    check_available("WAN_VACE")  # this engine's diffusers has it
    # An engine with a diffusers from before Wan VACE (a new engine process: nothing remembered).
    monkeypatch.setattr(video, "_available", {})
    monkeypatch.setitem(sys.modules, "diffusers", types.SimpleNamespace(__version__="0.30.0"))
    with pytest.raises(BadRequest) as info:
        check_available("WAN_VACE")
    assert info.value.field == "video.pipeline"
    assert "diffusers.WanVACEPipeline (diffusers >= 0.34)" in info.value.message
    assert "diffusers 0.30.0" in info.value.message and "IMAGE generator" in info.value.message


def test_pipeline_availability_is_decided_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22: "pipeline_unavailable" now and then while a pipeline loaded. The answer is decided
    once, under a lock, and every request after it (from many threads at once) gets the same."""
    import threading

    from engine.models import video

    monkeypatch.setattr(video, "_available", {})
    asked: list[str] = []
    real = video._unavailable_reason
    monkeypatch.setattr(video, "_unavailable_reason", lambda p: (asked.append(p), real(p))[1])
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            for _ in range(50):
                video.check_available("WAN_VACE")
                video.check_available("ANIMATEDIFF")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and sorted(asked) == ["ANIMATEDIFF", "WAN_VACE"]

