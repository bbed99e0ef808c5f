"""The draft tier (issue 15, engine/models/draft.py) with tiny models on the CPU: a draft job runs through the
same run function as a final job, in 4 steps with the LCM scheduler, the LoRA and the tiny VAE; its frame
keys differ from the final's; afterwards the pipeline is as loaded, so the next final job is bit-exact;
a LoRA for another family and a missing Hub LoRA offline give messages naming the file and the fix."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_testlib import depth_png, make_job
from safetensors.torch import load_file, save_file

from engine.contract.errors import EngineFault
from engine.contract.schema import JobRequest
from engine.jobs import batch as batch_runner
from engine.jobs.keys import request_digest
from engine.jobs.manager import JobManager
from engine.models import variants
from engine.models.draft import DEFAULT_LORAS, draft_request, resolve_lora
from engine.storage import Storage


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An in-process engine (job table, worker, frame cache): the worker's pipeline state can be inspected."""
    jm = JobManager(Storage(tmp_path_factory.mktemp("draft-engine")), default_device="cpu")
    jm.start()
    yield jm
    jm.stop()


def frames(storage: Storage, n: int = 2) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        data = depth_png(0.3 * i)
        sha = hashlib.sha256(data).hexdigest()
        storage.put_blob(sha, data)
        out.append({"frame": 1 + i, "depth": sha})
    return out


def run(jm: JobManager, body: dict[str, Any]) -> Any:
    job = jm.submit(JobRequest.model_validate(body))
    deadline = time.monotonic() + 300
    while job.status not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline, job.to_json()
        time.sleep(0.05)
    return job


def pixels(jm: JobManager, job: Any) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for number in sorted(job.done):
        with Image.open(jm.storage.frame_path(job.done[number])) as img:
            out.append(np.asarray(img.convert("RGB")).astype(np.int16))
    return out


def draft_body(tiny_models: dict[str, str], jm: JobManager, **draft: Any) -> dict[str, Any]:
    spec = {"lora": tiny_models["draft_lora"], **draft}
    body = make_job(tiny_models, frames(jm.storage), tier="draft", draft=spec, steps=12, guidance_scale=7.5)
    body["models"]["controlnet_pose"] = None
    return body


def test_draft_runs_through_run_batch_in_4_steps(manager: JobManager, tiny_models: dict[str, str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    real = batch_runner.run_batch

    def spy(models: Any, active: Any, maps: Any, seeds: Any, settings: Any, *args: Any, **kwargs: Any) -> Any:
        pipe = variants.variant(models, active)
        seen.append({"scheduler": type(pipe.scheduler).__name__, "vae": type(pipe.vae).__name__,
                     "adapters": list(models.base.get_active_adapters()), "steps": settings.steps,
                     "guidance": settings.guidance_scale, "seeds": list(seeds), "nets": active})
        return real(models, active, maps, seeds, settings, *args, **kwargs)

    monkeypatch.setattr(batch_runner, "run_batch", spy)
    final = run(manager, {**draft_body(tiny_models, manager), "tier": "final"})
    draft = run(manager, draft_body(tiny_models, manager, tiny_vae=True, tiny_vae_model=tiny_models["tiny_vae"]))
    assert final.status == draft.status == "done", (final.error, draft.error)
    # The same run function for both tiers; the draft swaps the scheduler, the VAE and the LoRA in.
    assert [s["scheduler"] for s in seen] == ["UniPCMultistepScheduler", "LCMScheduler"]
    assert [s["vae"] for s in seen] == ["AutoencoderKL", "AutoencoderTiny"]
    assert seen[0]["adapters"] == [] and len(seen[1]["adapters"]) == 1
    assert seen[1]["adapters"][0].startswith("vf_draft_")
    assert (seen[0]["steps"], seen[1]["steps"]) == (12, 4) and seen[1]["guidance"] == 1.0
    assert seen[0]["seeds"] == seen[1]["seeds"] == [42, 42] and seen[0]["nets"] == seen[1]["nets"] == ("depth",)
    assert draft.to_json()["steps"] == draft.step == 4
    # Different keys: the final's frames are not answered for the draft, and the pixels differ.
    assert set(final.frame_keys.values()).isdisjoint(draft.frame_keys.values())
    assert draft.cached == []
    a, b = pixels(manager, final), pixels(manager, draft)
    assert a[0].shape == b[0].shape == (64, 64, 3)
    assert np.abs(a[0] - b[0]).mean() > 1.0
    # Afterwards the pipeline is as loaded: scheduler, VAE, no adapter left.
    models = next(iter(manager.pipelines._items.values()))
    assert type(models.base.scheduler).__name__ == "UniPCMultistepScheduler"
    assert all(type(p.vae).__name__ == "AutoencoderKL" for p in [models.base, *models.variants.values()])
    assert not getattr(models.base.unet, "peft_config", {})


def test_final_after_draft_is_bit_exact(manager: JobManager, tiny_models: dict[str, str],
                                        tmp_path: Path) -> None:
    body = {**draft_body(tiny_models, manager), "tier": "final", "seed": 7}
    first = run(manager, body)
    before = pixels(manager, first)
    assert run(manager, {**draft_body(tiny_models, manager), "seed": 7}).status == "done"
    # The final frames again, made fresh (not from the cache): equal to the bit.
    for fkey in first.frame_keys.values():
        manager.storage.frame_path(fkey).unlink()
    again = run(manager, body)
    assert again.status == "done" and again.cached == []
    assert all(np.array_equal(x, y) for x, y in zip(before, pixels(manager, again), strict=True))


def test_draft_keys_pinned_to_their_settings(manager: JobManager, tiny_models: dict[str, str]) -> None:
    """Each draft option changes the frame keys; the final tier ignores the draft block."""
    def keys(**changes: Any) -> set[str]:
        body = draft_body(tiny_models, manager)
        for name, value in changes.items():
            if name in ("tier",):
                body[name] = value
            else:
                body["draft"][name] = value
        request = draft_request(JobRequest.model_validate(body))
        return {request_digest(request, _key(manager, request))}

    base = keys()
    assert keys(scheduler="TCD") != base and keys(lora_scale=0.5) != base and keys(tiny_vae=True) != base
    assert keys(steps=6) != base
    assert keys(tier="final") == keys(tier="final", scheduler="TCD", steps=8)


def _key(jm: JobManager, request: JobRequest) -> Any:
    from engine.models.pipelines import PipelineKey

    return PipelineKey(base="b", depth="d", pose=None, lora=None, lora_scale=0.0, device="cpu", dtype="float32",
                       attention_slicing=False, cpu_offload=False)


def test_draft_request_overrides_steps_and_guidance() -> None:
    body = make_job({"base": "a/b", "depth": "c/d", "pose": "e/f"}, [{"frame": 1, "guidance_scale": 9.0}],
                    tier="draft", draft={"steps": 4, "guidance_scale": 1.5})
    request = draft_request(JobRequest.model_validate(body))
    assert (request.steps, request.guidance_scale, request.frames[0].guidance_scale) == (4, 1.5, None)
    with pytest.raises(ValueError, match="tier: the draft tier runs the IMAGE generator"):
        JobRequest.model_validate({**body, "generator": "VIDEO"})


def test_lora_for_another_family_is_named(manager: JobManager, tiny_models: dict[str, str],
                                          tmp_path: Path) -> None:
    """A LoRA whose cross-attention is 2048 wide (SDXL's) on the SD 1.5-layout tiny UNet: a clear 400, told from
    its header at submit (engine/models/checks.py, issue 24) before anything loads."""
    tensors = load_file(tiny_models["draft_lora"])
    for key in list(tensors):
        if "attn2_to_k.lora_down" in key or "attn2_to_v.lora_down" in key:
            tensors[key] = tensors[key].new_zeros((tensors[key].shape[0], 2048))
    sdxl = tmp_path / "lcm-lora-sdxl.safetensors"
    save_file(tensors, str(sdxl))
    with pytest.raises(EngineFault) as info:
        run(manager, {**draft_body(tiny_models, manager), "draft": {"lora": str(sdxl)}})
    assert (info.value.status, info.value.code, info.value.field) == (400, "incompatible_model", "draft.lora")
    message = info.value.message
    assert "made for SDXL (cross-attention width 2048)" in message and "width 32" in message
    assert str(sdxl) in message and "use a LoRA made for" in message
    # Refused before anything loads: every pipeline the engine holds is as it was loaded.
    for models in manager.pipelines._items.values():
        assert not getattr(models.base.unet, "peft_config", {})
        assert type(models.base.scheduler).__name__ == "UniPCMultistepScheduler"


def test_missing_hub_lora_offline_names_file_and_command(manager: JobManager, tiny_models: dict[str, str],
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    """No draft LoRA given: the SD 1.5 default, which is not in the (empty) Hub cache, while offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    body = draft_body(tiny_models, manager)
    body["draft"] = {}
    job = run(manager, body)
    assert job.status == "failed" and job.error["code"] == "model_unavailable", job.error
    assert job.error["field"] == "draft.lora"
    message = job.error["message"]
    assert DEFAULT_LORAS[("sd15", "LCM")] == "latent-consistency/lcm-lora-sdv1-5"
    assert "Its file pytorch_lora_weights.safetensors is not in the Hugging Face cache" in message
    assert "`hf download latent-consistency/lcm-lora-sdv1-5 pytorch_lora_weights.safetensors`" in message
    assert "huggingface-cli download latent-consistency/lcm-lora-sdv1-5 pytorch_lora_weights.safetensors" in message


@pytest.mark.parametrize(("value", "code"), [
    ("./nowhere/lcm.safetensors", "model_unavailable"),
    ("lcm-lora.ckpt", "unsafe_model_format"),
    ("just-a-name", "model_unavailable"),
])
def test_bad_draft_lora_refused_at_submit(value: str, code: str) -> None:
    with pytest.raises(EngineFault) as info:
        resolve_lora(value)
    assert info.value.code == code and info.value.field == "draft.lora"


def test_hub_lora_ids() -> None:
    assert resolve_lora("latent-consistency/lcm-lora-sdxl").value == \
        "latent-consistency/lcm-lora-sdxl/pytorch_lora_weights.safetensors"
    assert resolve_lora("h1t/TCD-SD15-LoRA/other.safetensors").value == "h1t/TCD-SD15-LoRA/other.safetensors"
