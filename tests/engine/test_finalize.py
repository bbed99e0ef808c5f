"""Finalize Take on a real engine with tiny models: a 2x take from an approved one (spandrel upscaler
and plain resizing), FLOW-guided detail pass, cancel and resume, and the bad inputs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_testlib import make_job, read_png, wait_for
from PIL import Image

from engine.models.upscale import check_upscaler_path, enlarge, load_upscaler

SMALL, BIG = 64, 128
FRAMES = 4
SPEED = 2  # the approved take pans 2 px a frame at 64 px: 4 px at 128


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def approved_frame(n: int) -> np.ndarray:
    """A coherent approved take: a smooth texture sliding left SPEED px a frame."""
    y, x = np.mgrid[0:SMALL, 0:SMALL].astype(np.float32)
    value = 128 + 60 * np.sin((x + SPEED * n) / 5.0) * np.cos(y / 7.0)
    return np.clip(np.stack([value, 0.6 * value + 40, 255 - value], -1), 0, 255).astype(np.uint8)


def maps(client: Any, n: int) -> dict[str, Any]:
    """The control maps re-rendered at 2x: a depth ramp and the matching flow (2 * SPEED px)."""
    v = np.linspace(0.3, 0.7, BIG, dtype=np.float32)[:, None].repeat(BIG, axis=1)
    depth = (1 + np.rint(v * 65534)).astype(np.uint16)
    flow = np.zeros((BIG, BIG, 2), np.float32)
    flow[..., 0] = 2 * SPEED
    buf = io.BytesIO()
    np.save(buf, flow)
    return {"frame": n, "depth": client.upload_blob(png(depth)), "pose": None, "flow": client.upload_blob(buf.getvalue()),
            "source": client.upload_blob(png(approved_frame(n)))}


def finalize_job(tiny_models: dict[str, str], frames: list[dict[str, Any]], upscaler: str | None,
                 **finalize: Any) -> dict[str, Any]:
    job = make_job(tiny_models, frames, steps=4, seed=11, width=BIG, height=BIG)
    job["models"]["controlnet_pose"] = None
    job["coherence"] = {"mode": "FLOW", "strength": 0.5, "keyframe_interval": 0}
    job["finalize"] = {"upscaler": upscaler, "detail_strength": 0.3, **finalize}
    return job


@pytest.fixture()
def upscaler_x2(tiny_models: dict[str, str]) -> str:
    path = Path(tiny_models["base"]).parent / "upscaler-x2.safetensors"
    assert path.is_file(), "make-tiny-models writes upscaler-x2.safetensors"
    return str(path)


def test_upscaler_is_read_by_spandrel_and_compared_with_plain_resizing(upscaler_x2: str) -> None:
    model = load_upscaler(check_upscaler_path(upscaler_x2))
    assert model.name == "RealESRGAN Compact x2" and model.scale == 2
    source = approved_frame(1)
    by_model = enlarge(source, BIG, BIG, model)
    by_resize = enlarge(source, BIG, BIG, None)
    assert by_model.shape == by_resize.shape == (BIG, BIG, 3)
    # The tiny model is a nearest upscale plus a small random residual: close to, not equal to, resizing.
    diff = np.abs(by_model.astype(float) - by_resize.astype(float)).mean()
    assert 0.5 < diff < 20, diff


def test_finalize_makes_a_2x_take_that_follows_the_approved_one(client: Any, tiny_models: dict[str, str],
                                                                upscaler_x2: str, tmp_path: Path) -> None:
    frames = [maps(client, n) for n in range(1, FRAMES + 1)]
    results = {}
    for name, upscaler in (("model", upscaler_x2), ("resize", None)):
        job_id = client.submit(finalize_job(tiny_models, frames, upscaler))
        status = wait_for(client, job_id, timeout=600)
        assert status["status"] == "done" and status["frames"] == list(range(1, FRAMES + 1)), status
        assert status["detail"]["keyframes"] == [1]
        assert status["detail"]["upscaler"] == ("RealESRGAN Compact x2" if upscaler else "Lanczos resize")
        images = []
        for n in range(1, FRAMES + 1):
            client.fetch_frame(job_id, n, tmp_path / f"{name}-{n}.png")
            images.append(read_png(tmp_path / f"{name}-{n}.png"))
        results[name] = images
    for images in results.values():
        assert all(image.shape == (BIG, BIG, 3) for image in images)
        # The low-strength detail pass keeps the approved content: the 2x frame, shrunk back,
        # correlates with the approved frame.
        for n, image in enumerate(images, start=1):
            shrunk = np.asarray(Image.fromarray(image).resize((SMALL, SMALL), Image.Resampling.BOX)).astype(float)
            assert np.corrcoef(shrunk.ravel(), approved_frame(n).astype(float).ravel())[0, 1] > 0.6


def test_cancelled_finalize_resumes_after_its_last_frame(client: Any, tiny_models: dict[str, str],
                                                         upscaler_x2: str) -> None:
    frames = [maps(client, n) for n in range(1, FRAMES + 1)]
    job = finalize_job(tiny_models, frames, upscaler_x2, detail_strength=0.9)
    job["steps"] = 30  # slow enough to cancel mid-take
    job_id = client.submit(job)
    while len(client.status(job_id)["frames"]) < 1:
        pass
    client.cancel(job_id)
    status = wait_for(client, job_id)
    finished = status["frames"]
    assert status["status"] == "cancelled" and 1 <= len(finished) < FRAMES, status
    resumed = wait_for(client, client.submit(job), timeout=600)
    assert resumed["status"] == "done" and resumed["cached_frames"] == finished, resumed
    assert resumed["detail"]["keyframes"] == []  # the chain continued


@pytest.mark.parametrize("value, code", [("/tmp/RealESRGAN_x4plus.pth", "unsafe_model_format"),
                                         ("~/models/4x-UltraSharp.ckpt", "unsafe_model_format"),
                                         ("/no/such/upscaler.safetensors", "model_unavailable")])
def test_bad_upscaler_files_are_refused_naming_the_field(core: Any, client: Any, tiny_models: dict[str, str],
                                                         value: str, code: str) -> None:
    job = finalize_job(tiny_models, [maps(client, 1)], value)
    with pytest.raises(core.client.EngineError) as info:
        client.submit(job)
    assert info.value.code == code and info.value.field == "finalize.upscaler"
    assert value in str(info.value)
    if code == "unsafe_model_format":
        assert ".safetensors" in str(info.value) and "pickle" in str(info.value)


def test_a_finalize_job_without_the_approved_frames_names_them(core: Any, client: Any,
                                                                tiny_models: dict[str, str]) -> None:
    frame = maps(client, 1)
    del frame["source"]
    with pytest.raises(core.client.EngineError) as info:
        client.submit(finalize_job(tiny_models, [frame], None))
    assert "frames[0].source" in str(info.value)
