"""The GPU path's options (issue 15): precision, channels-last, fused QKV, torch.compile.

Run on the CPU with the tiny models, in process (no HTTP): each option's frames are compared
with the plain path's. Tolerances, in 8-bit RGB levels (0..255):
- channels-last, fused QKV, compile: the same arithmetic in another order; every pixel within
  ``SAME_MAX`` levels. They stay out of the cache keys, like the batch size.
- bf16: another precision, so other frames (mean within ``BF16_MEAN`` levels); its dtype is in the keys.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_testlib import A_ID, B_ID, depth_png, make_job, two_character_mask
from PIL import Image

SAME_MAX = 2
BF16_MEAN = 3.0


def _put(storage: Any, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    assert storage.put_blob(sha, data)
    return sha


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def run_jobs(tmp: Path, speed: Any, bodies: list[Any]) -> tuple[list[np.ndarray], list[Any]]:
    """Run ``bodies`` (callables storage -> request dict) one after another on an in-process
    JobManager with ``speed``; returns frame 1 of each and the jobs."""
    from engine.contract.schema import JobRequest
    from engine.jobs.manager import JobManager
    from engine.storage import Storage

    storage = Storage(tmp)
    manager = JobManager(storage, default_device="cpu", max_pipelines=2, speed=speed)
    manager.start()
    images, jobs = [], []
    try:
        for body in bodies:
            job = manager.submit(JobRequest.model_validate(body(storage)))
            deadline = time.monotonic() + 600
            while job.status not in ("done", "failed", "cancelled") and time.monotonic() < deadline:
                time.sleep(0.02)
            assert job.status == "done", (job.status, job.error)
            with Image.open(storage.frame_path(job.done[1])) as img:
                images.append(np.asarray(img.convert("RGB")).astype(np.int16))
            jobs.append(job)
    finally:
        manager.stop()
    return images, jobs


def plain_body(tiny_models: dict[str, str], seed: int = 7) -> Any:
    def body(storage: Any) -> dict[str, Any]:
        job = make_job(tiny_models, [{"frame": 1, "depth": _put(storage, depth_png(0.4)), "pose": None}],
                       seed=seed, steps=4, batch_size=1)
        job["models"]["controlnet_pose"] = None
        return job
    return body


def character_body(tiny_models: dict[str, str]) -> Any:
    """Two characters with descriptions, one with a LoRA (PEFT layers on to_q/to_k/to_v)."""
    def body(storage: Any) -> dict[str, Any]:
        frame = {"frame": 1, "depth": _put(storage, depth_png(0.5)), "pose": None,
                 "mask": _put(storage, _png(two_character_mask()))}
        job = make_job(tiny_models, [frame], seed=400, steps=4, batch_size=1)
        job["models"]["controlnet_pose"] = None
        job["characters"] = [
            {"name": "Traveller", "description": "a woman in a bright red coat", "mask_ids": [A_ID],
             "lora": tiny_models["lora"], "lora_scale": 1.0},
            {"name": "Guard", "description": "a tall man in a grey cloak", "mask_ids": [B_ID]},
        ]
        return job
    return body


def test_defaults_are_the_plain_path_and_keep_the_cache_keys() -> None:
    from engine.models.pipelines import PipelineKey, SpeedOptions, dtype_name

    cpu = SpeedOptions().key_fields("cpu")
    assert cpu == {"dtype": "float32", "channels_last": False, "fused_qkv": False, "compile": ""}
    assert SpeedOptions().key_fields("cuda") == {"dtype": "float16", "channels_last": True, "fused_qkv": True,
                                                 "compile": ""}
    # A key built as before this change equals the default one (the pinned frame keys hold).
    old = PipelineKey(base="b", depth=None, pose=None, lora=None, lora_scale=0.0, device="cpu", dtype="float32",
                      attention_slicing=False, cpu_offload=False)
    assert old == PipelineKey(base="b", depth=None, pose=None, lora=None, lora_scale=0.0, device="cpu",
                              attention_slicing=False, cpu_offload=False, **cpu)
    assert dtype_name("cuda", "bf16") == "bfloat16" and dtype_name("cpu", "fp16") == "float16"
    assert SpeedOptions(compile="inductor").key_fields("cuda", cpu_offload=True)["compile"] == ""


def test_options_from_the_environment_and_bad_values() -> None:
    from engine.models.pipelines import SpeedOptions

    speed = SpeedOptions.from_env({"VIEWFINDER_ENGINE_PRECISION": "bf16", "VIEWFINDER_ENGINE_COMPILE": "1",
                                   "VIEWFINDER_ENGINE_CHANNELS_LAST": "0"})
    assert speed == SpeedOptions(precision="bf16", channels_last=False, fuse_qkv=None, compile="inductor")
    assert SpeedOptions.from_env({}) == SpeedOptions()
    with pytest.raises(ValueError, match="precision must be one of auto, fp16, bf16, fp32"):
        SpeedOptions.from_env({"VIEWFINDER_ENGINE_PRECISION": "fp8"})
    with pytest.raises(ValueError, match="VIEWFINDER_ENGINE_FUSE_QKV='maybe': use auto, 0 or 1"):
        SpeedOptions.from_env({"VIEWFINDER_ENGINE_FUSE_QKV": "maybe"})


def test_precision_enters_the_frame_keys_and_the_speed_options_do_not(tiny_models: dict[str, str],
                                                                     tmp_path: Path) -> None:
    from engine.contract.schema import JobRequest
    from engine.jobs.manager import JobManager
    from engine.models.pipelines import SpeedOptions
    from engine.storage import Storage

    storage = Storage(tmp_path)
    request = JobRequest.model_validate(plain_body(tiny_models)(storage))
    keys = {}
    for name, speed in {"plain": SpeedOptions(), "fast": SpeedOptions(channels_last=True, fuse_qkv=True,
                                                                       compile="inductor"),
                        "bf16": SpeedOptions(precision="bf16")}.items():
        manager = JobManager(storage, default_device="cpu", speed=speed)  # not started: submit only computes keys
        keys[name] = manager.submit(request).frame_keys[1]
    assert keys["plain"] == keys["fast"] and keys["plain"] != keys["bf16"]


def test_sdpa_attention_and_the_options_give_the_plain_frames(tiny_models: dict[str, str], tmp_path: Path) -> None:
    from engine.models.pipelines import SpeedOptions, attention_kinds

    body = plain_body(tiny_models)
    plain, jobs = run_jobs(tmp_path / "plain", SpeedOptions(), [body])
    fused, fused_jobs = run_jobs(tmp_path / "fast", SpeedOptions(channels_last=True, fuse_qkv=True), [body])
    bf16, _ = run_jobs(tmp_path / "bf16", SpeedOptions(precision="bf16"), [body])
    # Attention runs through torch's scaled_dot_product_attention (diffusers' 2_0 processors).
    assert jobs[0].key.dtype == "float32" and fused_jobs[0].key.fused_qkv and fused_jobs[0].key.channels_last
    assert int(np.abs(fused[0] - plain[0]).max()) <= SAME_MAX
    diff = float(np.abs(bf16[0] - plain[0]).mean())
    assert 0.0 < diff <= BF16_MEAN, diff  # other frames, but the same picture
    from engine.models.pipelines import PipelineKey, load_models
    from engine.models.refs import resolve_ref

    base = resolve_ref(tiny_models["base"], "models.base", "base")
    depth = resolve_ref(tiny_models["depth"], "models.controlnet_depth", "controlnet")
    for fuse in (False, True):
        key = PipelineKey(base=base.identity(), depth=depth.identity(), pose=None, lora=None, lora_scale=0.0,
                          device="cpu", dtype="float32", attention_slicing=False, cpu_offload=False, fused_qkv=fuse)
        models = load_models(key, {"base": base, "depth": depth, "pose": None}, None, lambda *a: None)
        want = {"FusedAttnProcessor2_0"} if fuse else {"AttnProcessor2_0"}
        assert attention_kinds(models.base.unet) == want and attention_kinds(models.nets["depth"]) == want
        models.set_fused(False)  # what a call with LoRA adapters loaded does
        assert attention_kinds(models.base.unet) == {"AttnProcessor2_0"}


def test_fused_qkv_unfuses_for_characters(tiny_models: dict[str, str], tmp_path: Path) -> None:
    """A character LoRA lives on to_q/to_k/to_v, which a fused to_qkv would bypass: calls run
    unfused while the UNet has adapters, and the plain job after them is fused again."""
    from engine.models.pipelines import SpeedOptions

    bodies = [plain_body(tiny_models), character_body(tiny_models), plain_body(tiny_models, seed=8)]
    plain, _ = run_jobs(tmp_path / "plain", SpeedOptions(), bodies)
    fused, jobs = run_jobs(tmp_path / "fused", SpeedOptions(fuse_qkv=True), bodies)
    assert jobs[1].key.fused_qkv
    diffs = [int(np.abs(a - b).max()) for a, b in zip(plain, fused, strict=True)]
    assert max(diffs) <= SAME_MAX, diffs
    assert float(np.abs(plain[1] - plain[0]).mean()) > 1.0  # the character job is another picture


def _compile_works() -> str | None:
    """None when torch.compile (inductor) can build code on this CPU, else why not."""
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "torch.compile's inductor backend needs a C++ compiler (g++/clang++), and this machine has none"
    try:
        import torch

        torch.compile(lambda x: x * 2 + 1)(torch.ones(2))
    except Exception as exc:  # noqa: BLE001
        return f"torch.compile does not work on this CPU: {type(exc).__name__}: {exc}"
    return None


def test_compile_on_and_off_give_the_same_frames(tiny_models: dict[str, str], tmp_path: Path) -> None:
    reason = _compile_works()
    if reason:
        pytest.skip(reason)
    from engine.models.pipelines import SpeedOptions

    body = plain_body(tiny_models)
    eager, _ = run_jobs(tmp_path / "eager", SpeedOptions(), [body])
    compiled, jobs = run_jobs(tmp_path / "compiled", SpeedOptions(compile="inductor"),
                              [body, plain_body(tiny_models, seed=8)])
    assert int(np.abs(compiled[0] - eager[0]).max()) <= SAME_MAX
    # The warm-up is reported on the job that compiled, not on the next one of the same shape.
    assert jobs[0].timings["compile_warmup_s"] > 0.0 and "compile_warmup_s" not in jobs[1].timings


def test_compile_failure_falls_back_to_eager_with_one_warning(tiny_models: dict[str, str], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A compiler that fails (as on a machine without a toolchain): one warning, the jobs finish,
    and their frames are the eager frames (the retry starts from the same noise)."""
    from engine.models.pipelines import FAULT_COMPILE_ENV, SpeedOptions

    body = plain_body(tiny_models)
    eager, _ = run_jobs(tmp_path / "eager", SpeedOptions(), [body])
    monkeypatch.setenv(FAULT_COMPILE_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="engine.models.pipelines"):
        images, jobs = run_jobs(tmp_path / "failing", SpeedOptions(compile="inductor"),
                                [body, plain_body(tiny_models, seed=8)])
    warnings = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "injected by " + FAULT_COMPILE_ENV in warnings[0].getMessage()
    assert [j.status for j in jobs] == ["done", "done"]
    assert np.array_equal(images[0], eager[0])
    assert all("compile_warmup_s" not in j.timings for j in jobs)


def test_compile_preference_reaches_the_engine_command(core: Any) -> None:
    """The add-on's Compile preference starts the local engine with --compile; changing it replaces the engine."""
    import sys

    try:
        plain = core.process.get_engine(python=sys.executable)
        compiled = core.process.get_engine(python=sys.executable, compile_models=True)
        assert compiled is not plain and compiled.local.compile_models and not plain.local.compile_models
        assert core.process.get_engine(python=sys.executable, compile_models=True) is compiled
    finally:
        core.process.shutdown_engine()


def test_bad_speed_settings_stop_the_engine_at_start_naming_them(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from engine_testlib import ROOT

    env = {**os.environ, "VIEWFINDER_ENGINE_FUSE_QKV": "maybe"}
    done = subprocess.run([sys.executable, "-m", "engine", "serve", "--port", "0", "--data-dir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "VIEWFINDER_ENGINE_FUSE_QKV='maybe': use auto, 0 or 1" in done.stderr
    done = subprocess.run([sys.executable, "-m", "engine", "serve", "--precision", "fp8"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--precision" in done.stderr
