"""Every family end to end on tiny models (issue 24): SDXL with its union ControlNet, Flux.1 with its own, single
files, LoRAs in both layouts, characters, the draft tier; over HTTP (a job, its frames, the cache, cancel) and
in process, where what reaches the pipeline call is checked.

Figures are mean absolute differences in levels of 255 between frames made with and without something (a map,
a LoRA, a character), on tiny random models in float32 on a CPU: pinned within float noise across CPUs, so a
map, mode or LoRA that stops reaching the frames is seen.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from engine_testlib import depth_png, make_job, pose_png, read_png, wait_for
from test_maps import all_maps, lineart_array, png, run
from test_maps import put as upload

from engine.jobs.manager import JobManager
from engine.models import batch as model_batch
from engine.storage import Storage


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An in-process engine whose worker's pipelines can be inspected."""
    jm = JobManager(Storage(tmp_path_factory.mktemp("families-engine")), default_device="cpu", max_pipelines=2)
    jm.start()
    yield jm
    jm.stop()


def pixels(jm: JobManager, job: Any) -> dict[int, np.ndarray]:
    return {n: read_png(jm.storage.frame_path(key)).astype(np.int16) for n, key in sorted(job.done.items())}


def difference(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> list[float]:
    return [round(float(np.abs(a[n] - b[n]).mean()), 2) for n in sorted(a)]


def family_job(tiny_models: dict[str, str], frames: list[dict[str, Any]], family: str, **fields: Any) -> dict[str, Any]:
    """A job on the tiny model of ``family`` with its union ControlNet (SD 1.5: its per-map nets)."""
    job = make_job(tiny_models, frames, **fields)
    if family == "sdxl":
        job["models"] = {"family": "sdxl", "base": tiny_models["sdxl"], "controlnet_union": tiny_models["union_sdxl"]}
    elif family == "flux":
        job["models"] = {"family": "flux", "base": tiny_models["flux"], "controlnet_union": tiny_models["union_flux"]}
        job.setdefault("guidance_scale", 3.5)
    return job


def depth_pose(put: Any, n: int = 3) -> list[dict[str, Any]]:
    return [{"frame": 1 + i, "depth": put(depth_png(0.2 * i)), "pose": put(pose_png(shift=i))} for i in range(n)]


def spy_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each pipeline call: its class, ControlNet module and arguments."""
    calls: list[dict[str, Any]] = []
    real = model_batch._call_models

    def spy(models: Any, pipe: Any, cancel: Any, **kwargs: Any) -> Any:
        net = getattr(pipe, "controlnet", None)
        calls.append({"pipe": type(pipe).__name__, "net": type(net).__name__, "passes": len(getattr(net, "nets", [1])),
                      **{k: kwargs.get(k) for k in ("control_mode", "controlnet_conditioning_scale",
                                                    "control_guidance_start", "control_guidance_end")},
                      "images": len(kwargs.get("control_image") or [])})
        return real(models, pipe, cancel, **kwargs)

    monkeypatch.setattr(model_batch, "_call_models", spy)
    return calls


# SDXL with its union ControlNet ----------------------------------------------------------------------------


def test_sdxl_union_takes_every_map_in_its_mode(manager: JobManager, tiny_models: dict[str, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Five maps in one union pass (modes 1, 0, 4, 3, 5) while their weights and ranges agree; one pass per map,
    each with its own weight and range, when they differ; the frames differ from those made without maps."""
    put = upload(manager)
    frames = [{"frame": 1 + i, **all_maps(put, i)} for i in range(2)]
    calls = spy_calls(monkeypatch)
    same = run(manager, family_job(tiny_models, frames, "sdxl", seed=11))
    own = run(manager, family_job(tiny_models, frames, "sdxl", seed=11, normal_weight=0.5,
                                  control_ranges={"seg": [0.0, 0.5]}))
    bare = run(manager, family_job(tiny_models, [{"frame": f["frame"]} for f in frames], "sdxl", seed=11))
    assert [{k: c[k] for k in ("pipe", "net", "passes", "control_mode", "controlnet_conditioning_scale")}
            for c in calls] == [
        {"pipe": "StableDiffusionXLControlNetUnionPipeline", "net": "ControlNetUnionModel", "passes": 1,
         "control_mode": [1, 0, 4, 3, 5], "controlnet_conditioning_scale": 1.0},
        {"pipe": "StableDiffusionXLControlNetUnionPipeline", "net": "MultiControlNetUnionModel", "passes": 5,
         "control_mode": [1, 0, 4, 3, 5], "controlnet_conditioning_scale": [1.0, 1.0, 0.5, 1.0, 1.0]},
        {"pipe": "StableDiffusionXLPipeline", "net": "NoneType", "passes": 1, "control_mode": None,
         "controlnet_conditioning_scale": None}]
    assert calls[1]["control_guidance_end"] == [1.0, 1.0, 1.0, 1.0, 0.5]
    # The union net shares its modules across both variants: one copy in memory.
    models = next(m for m in manager.pipelines._items.values() if m.family == "sdxl")
    assert list(models.nets) == ["union"] and set(models.variants) == {(), ("union",), ("union",) * 5}
    assert difference(pixels(manager, same), pixels(manager, bare)) == pytest.approx([10.76, 10.76], abs=0.3)
    # Own weights and ranges run one pass per map: the fused pass and five summed passes differ by more than
    # the one map's weight would (xinsir's union fuses its conditions inside the net), hence the switch only then.
    assert difference(pixels(manager, own), pixels(manager, same)) == pytest.approx([5.95, 5.94], abs=0.3)


def test_sdxl_per_map_controlnet(manager: JobManager, tiny_models: dict[str, str]) -> None:
    """SDXL also takes one ControlNet per map (diffusers/controlnet-depth-sdxl-1.0's layout)."""
    frames = depth_pose(upload(manager), 2)
    job = family_job(tiny_models, frames, "sdxl", seed=12)
    job["models"] = {"family": "sdxl", "base": tiny_models["sdxl"], "controlnet_depth": tiny_models["sdxl_depth"],
                     "controlnet_pose": None}
    done = run(manager, job)
    assert (done.key.union, done.key.net_kinds()) == (None, ("depth",))


def flow_npy(shift: float = 0.0) -> bytes:
    """A backward flow of ``shift`` pixels to the right (float32 H x W x 2 .npy, as the add-on writes it)."""
    import io

    from engine_testlib import SIZE

    flow = np.zeros((SIZE, SIZE, 2), np.float32)
    flow[..., 0] = -shift
    buf = io.BytesIO()
    np.save(buf, flow)
    return buf.getvalue()


def test_sdxl_flow_runs_the_union_img2img(manager: JobManager, tiny_models: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """FLOW on SDXL: a keyframe from noise, then each frame from the previous one warped along the flow, through
    StableDiffusionXLControlNetUnionImg2ImgPipeline. Random tiny models do not hold a frame together from one
    img2img step (SD 1.5's tiny models move 28.8 and 19.2 levels on the same shot, where INDEPENDENT frames of one
    seed move 0.02): the figures pin the path, not a quality."""
    put = upload(manager)
    frames = [{**f, "flow": put(flow_npy(1.0))} for f in depth_pose(put, 3)]
    calls = spy_calls(monkeypatch)
    flow = run(manager, family_job(tiny_models, frames, "sdxl", seed=13, coherence={"mode": "FLOW"}))
    independent = run(manager, family_job(tiny_models, frames, "sdxl", seed=13))
    assert [c["pipe"] for c in calls[:3]] == ["StableDiffusionXLControlNetUnionPipeline",
                                              "StableDiffusionXLControlNetUnionImg2ImgPipeline",
                                              "StableDiffusionXLControlNetUnionImg2ImgPipeline"]
    assert [c["control_mode"] for c in calls[:3]] == [[1, 0]] * 3
    assert flow.detail["keyframes"] == [1]
    made, alone = pixels(manager, flow), pixels(manager, independent)
    step = [round(float(np.abs(made[n] - made[n - 1]).mean()), 2) for n in (2, 3)]
    assert step == pytest.approx([29.07, 19.1], abs=0.3), step
    assert difference({1: made[1]}, {1: alone[1]}) == [0.0]  # the keyframe is the INDEPENDENT frame


def test_sdxl_prompt_travel_blends_both_encoders_and_the_pooled_embedding(manager: JobManager,
                                                                          tiny_models: dict[str, str]) -> None:
    """A frame on one key is exactly the frame of that prompt alone; a half-way frame lies between the two."""
    put = upload(manager)
    frames = depth_pose(put, 3)
    for frame, weights in zip(frames, ([1.0, 0.0], [0.5, 0.5], [0.0, 1.0]), strict=True):
        frame["prompt_weights"] = weights
    travel = run(manager, family_job(tiny_models, frames, "sdxl", seed=14, prompt_keys=["a red car", "a blue boat"]))
    plain = [{k: v for k, v in f.items() if k != "prompt_weights"} for f in frames]
    red = run(manager, family_job(tiny_models, plain, "sdxl", seed=14, prompt="a red car"))
    boat = run(manager, family_job(tiny_models, plain, "sdxl", seed=14, prompt="a blue boat"))
    made, a, b = pixels(manager, travel), pixels(manager, red), pixels(manager, boat)
    assert difference({1: made[1]}, {1: a[1]}) == [0.0] and difference({3: made[3]}, {3: b[3]}) == [0.0]
    # Tiny text encoders move a frame little; the blend sits about half way between the two prompts' frames.
    between = difference({2: made[2]}, {2: a[2]}) + difference({2: made[2]}, {2: b[2]}) + difference(
        {2: a[2]}, {2: b[2]})
    assert between == pytest.approx([0.14, 0.13, 0.27], abs=0.03), between


# Flux.1 with its union ControlNet --------------------------------------------------------------------------


def test_flux_union_takes_depth_pose_and_line_art(manager: JobManager, tiny_models: dict[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each map a pass of the union net in its mode (depth 2, pose 4, line art as canny 0) with its own weight;
    prompt travel blends the T5 and pooled CLIP embeddings (a frame on one key is that prompt's frame)."""
    put = upload(manager)
    frames = [{**f, "lineart": put(png(lineart_array(i)))} for i, f in enumerate(depth_pose(put, 2))]
    calls = spy_calls(monkeypatch)
    mapped = run(manager, family_job(tiny_models, frames, "flux", seed=21, lineart_weight=0.5))
    bare = run(manager, family_job(tiny_models, [{"frame": f["frame"]} for f in frames], "flux", seed=21))
    assert [{k: c[k] for k in ("pipe", "net", "passes", "control_mode", "controlnet_conditioning_scale")}
            for c in calls] == [
        {"pipe": "FluxControlNetPipeline", "net": "BatchedFluxMultiControlNetModel", "passes": 1,
         "control_mode": [2, 4, 0],
         "controlnet_conditioning_scale": [1.0, 1.0, 0.5]},
        {"pipe": "FluxPipeline", "net": "NoneType", "passes": 1, "control_mode": None,
         "controlnet_conditioning_scale": None}]
    assert difference(pixels(manager, mapped), pixels(manager, bare)) == pytest.approx([42.87, 43.25], abs=0.3)
    travel = [{**f, "prompt_weights": w} for f, w in zip(frames, ([1.0, 0.0], [0.5, 0.5]), strict=True)]
    blended = run(manager, family_job(tiny_models, travel, "flux", seed=21, lineart_weight=0.5,
                                      prompt_keys=["a red car on a street", "a blue boat"]))
    made, plain = pixels(manager, blended), pixels(manager, mapped)
    assert difference(made, plain) == pytest.approx([0.0, 0.72], abs=0.1)


# Over HTTP, a real engine process: a job, its frames, the cache, cancel --------------------------------------


@pytest.mark.engine
@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_family_end_to_end_cache_and_cancel(client: Any, tiny_models: dict[str, str], tmp_path: Path,
                                            family: str) -> None:
    frames = depth_pose(client.upload_blob, 3)
    job = family_job(tiny_models, frames, family, seed=31)
    status = wait_for(client, client.submit(job))
    assert status["status"] == "done" and status["frames"] == [1, 2, 3], status
    made = [read_png(client.fetch_frame(status["id"], n, str(tmp_path / f"{n}.png"))) for n in (1, 2, 3)]
    assert all(frame.shape == (64, 64, 3) for frame in made)
    # A repeat is answered from the cache, whatever the batch size.
    again = client.submit_full({**job, "batch_size": 1})
    assert again["status"] == "done" and again["cached_frames"] == [1, 2, 3]
    # Cancel mid-job: finished frames kept, a resubmit makes only the rest.
    long = {**job, "seed": 32, "steps": 30, "batch_size": 1}
    job_id = client.submit(long)
    deadline = time.monotonic() + 120
    while client.status(job_id)["frames_done"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    client.cancel(job_id)
    cancelled = wait_for(client, job_id)
    assert cancelled["status"] == "cancelled" and 1 <= cancelled["frames_done"] < 3, cancelled
    resumed = client.submit_full(long)
    assert resumed["cached_frames"] == cancelled["frames"]
    assert wait_for(client, resumed["id"])["status"] == "done"


# Single files, LoRAs ----------------------------------------------------------------------------------------


def fake_hub_cache(root: Path, repo: str, folder: str) -> Path:
    """A Hugging Face cache holding ``repo``'s configs and tokenizers (copied from ``folder``), no weights."""
    import shutil

    snapshot = root / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot, ignore=shutil.ignore_patterns("*.safetensors"))
    (root / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (root / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0" * 40)
    return root


@pytest.mark.parametrize("family, file, folder", [("sd15", "sd15_file", "base"), ("sdxl", "sdxl_file", "sdxl")])
def test_single_files_load_offline_and_make_the_folders_frames(manager: JobManager, tiny_models: dict[str, str],
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               family: str, file: str, folder: str) -> None:
    """A checkpoint in the original key layout makes exactly the frames of the diffusers folder it was written
    from: with ``models.base_config`` naming a config folder, and with none, from the family's reference
    repository in the Hugging Face cache (configs only, no weights: nothing is downloaded)."""
    from huggingface_hub import constants

    from engine.models.loaders import REFERENCE_REPOS

    frames = depth_pose(upload(manager), 2)
    job = family_job(tiny_models, frames, family, seed=41)
    from_folder = pixels(manager, run(manager, job))
    given = {**job, "models": {**job["models"], "base": tiny_models[file], "base_config": tiny_models[folder]}}
    assert difference(pixels(manager, run(manager, given)), from_folder) == [0.0, 0.0]
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(fake_hub_cache(tmp_path, REFERENCE_REPOS[family],
                                                                      tiny_models[folder])))
    cached = {**job, "models": {**job["models"], "base": tiny_models[file]}, "seed": 42}
    again = {**job, "seed": 42}
    assert difference(pixels(manager, run(manager, cached)), pixels(manager, run(manager, again))) == [0.0, 0.0]


@pytest.mark.parametrize("family, lora, change", [
    ("sd15", "lora", [26.23, 26.31]), ("sd15", "draft_lora", [0.52, 0.52]),  # diffusers, kohya layouts
    ("sdxl", "sdxl_lora", [2.66, 2.67]), ("sdxl", "sdxl_lora_kohya", [1.45, 1.45]),
    ("flux", "flux_lora", [0.32, 0.32])])
def test_loras_in_kohya_and_diffusers_layouts(manager: JobManager, tiny_models: dict[str, str], family: str,
                                              lora: str, change: list[float]) -> None:
    """The film's LoRA (fused at load) changes the frames, in either layout, on each family."""
    frames = depth_pose(upload(manager), 2)
    job = family_job(tiny_models, frames, family, seed=43)
    with_lora = {**job, "models": {**job["models"], "lora": tiny_models[lora], "lora_scale": 1.0}}
    assert difference(pixels(manager, run(manager, with_lora)), pixels(manager, run(manager, job))) == \
        pytest.approx(change, rel=0.1)


# Characters and the draft tier on SDXL ----------------------------------------------------------------------


def sdxl_character_job(tiny_models: dict[str, str], put: Any, description: str, **fields: Any) -> dict[str, Any]:
    """One frame, two characters (A a left band, B a right band of the id mask), the SDXL IP-Adapter, with A's
    reference image and the film's style reference."""
    from engine_testlib import A_ID, B_ID, noise_image, png_bytes, two_character_mask

    frame = {"frame": 1, "depth": put(depth_png(0.5)), "mask": put(png_bytes(two_character_mask()))}
    job = family_job(tiny_models, [frame], "sdxl", seed=51, steps=6, batch_size=1, **fields)
    job["models"]["ip_adapter"] = tiny_models["sdxl_ip_adapter"]
    job["characters"] = [{"name": "Traveller", "description": description, "mask_ids": [A_ID],
                          "references": [put(noise_image(1))], "identity_strength": 1.0},
                         {"name": "Guard", "description": "a tall man in a grey cloak", "mask_ids": [B_ID]}]
    job["style_reference"] = put(noise_image(2))
    return job


def test_sdxl_regional_characters_and_masked_ip_adapter(manager: JobManager, tiny_models: dict[str, str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A character's description acts inside its mask: changing A's moves A's pixels more than the rest. Blocks
    are both encoders' outputs (80 wide here, 2048 on SDXL), three of 77 tokens; the pooled embedding is the
    shot prompt's alone; the IP-Adapter gets A's slot and the style slot."""
    from engine_testlib import A_ID, two_character_mask

    seen: list[dict[str, Any]] = []
    real = model_batch._call_models

    def spy(models: Any, pipe: Any, cancel: Any, **kwargs: Any) -> Any:
        seen.append({k: tuple(v.shape) for k, v in kwargs.items() if k.endswith("prompt_embeds")}
                    | {"ip": tuple(kwargs["ip_adapter_image_embeds"][0].shape)})
        return real(models, pipe, cancel, **kwargs)

    monkeypatch.setattr(model_batch, "_call_models", spy)
    put = upload(manager)
    red = run(manager, sdxl_character_job(tiny_models, put, "a woman in a bright red coat"))
    blue = run(manager, sdxl_character_job(tiny_models, put, "a robot made of blue glass"))
    assert seen[0] == {"prompt_embeds": (1, 231, 80), "negative_prompt_embeds": (1, 231, 80),
                       "pooled_prompt_embeds": (1, 32), "negative_pooled_prompt_embeds": (1, 32), "ip": (2, 2, 32)}
    assert red.identity["regional_batches"] == 1 and red.identity["images_encoded"] == 2
    change = np.abs(pixels(manager, red)[1] - pixels(manager, blue)[1]).mean(axis=2)
    mask = two_character_mask()
    inside, outside = float(change[mask == A_ID].mean()), float(change[mask != A_ID].mean())
    assert (round(inside, 2), round(outside, 2)) == pytest.approx((0.23, 0.11), abs=0.03)
    assert inside > 1.8 * outside  # the change is A's: outside it only what A's pixels pass on through the UNet


def test_sdxl_draft_tier_runs_the_lcm_and_tcd_loras_and_gives_the_pipeline_back(manager: JobManager,
                                                                       tiny_models: dict[str, str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    real = model_batch._call_models

    def spy(models: Any, pipe: Any, cancel: Any, **kwargs: Any) -> Any:
        seen.append({"scheduler": type(pipe.scheduler).__name__, "steps": kwargs["num_inference_steps"],
                     "adapters": list(models.base.get_active_adapters())})
        return real(models, pipe, cancel, **kwargs)

    frames = depth_pose(upload(manager), 2)
    final = family_job(tiny_models, frames, "sdxl", seed=61, steps=8)
    first = run(manager, final)
    before = pixels(manager, first)
    monkeypatch.setattr(model_batch, "_call_models", spy)
    draft = run(manager, {**final, "tier": "draft", "draft": {"lora": tiny_models["sdxl_draft_lora"]}})
    assert seen[0]["scheduler"] == "LCMScheduler" and seen[0]["steps"] == 4
    assert len(seen[0]["adapters"]) == 1 and seen[0]["adapters"][0].startswith("vf_draft_")
    assert difference(pixels(manager, draft), before) == pytest.approx([11.36, 11.36], abs=0.3)
    # TCD: the same path with TCDScheduler (h1t/TCD-SDXL-LoRA; the tiny distillation LoRA stands in for it).
    tcd = run(manager, {**final, "tier": "draft", "draft": {"lora": tiny_models["sdxl_draft_lora"],
                                                            "scheduler": "TCD"}})
    assert (seen[1]["scheduler"], seen[1]["steps"], seen[1]["adapters"]) == ("TCDScheduler", 4, seen[0]["adapters"])
    assert difference(pixels(manager, tcd), before) == pytest.approx([3.57, 3.57], abs=0.3)
    assert set(tcd.frame_keys.values()).isdisjoint(draft.frame_keys.values())
    models = next(m for m in manager.pipelines._items.values() if m.family == "sdxl")
    assert type(models.base.scheduler).__name__ == "UniPCMultistepScheduler"
    assert not getattr(models.base.unet, "peft_config", {})
    # The next final job is bit-exact: its frames, taken out of the cache and made again, equal the first ones.
    for key in first.done.values():
        manager.storage.frame_path(key).unlink()
    assert difference(pixels(manager, run(manager, final)), before) == [0.0, 0.0]


def test_flux_flow_holds_carried_regions_in_packed_latents(manager: JobManager, tiny_models: dict[str, str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """FLOW on Flux: FluxControlNetImg2ImgPipeline from the warped frame, the carried regions held in its packed
    latents (FlowMatchBlendCallback). The hold changes the frames (with it and without); that it holds them
    nearer the previous frame does not show on random tiny models, where the free last steps move a frame as
    far (SD 1.5's tiny models neither: test_sdxl_flow_runs_the_union_img2img)."""
    from engine.models.callbacks import FlowMatchBlendCallback

    put = upload(manager)
    frames = [{**f, "flow": put(flow_npy(0.0))} for f in depth_pose(put, 3)]
    calls = spy_calls(monkeypatch)
    holds: list[Any] = []
    real_blend = model_batch._latent_blend
    monkeypatch.setattr(model_batch, "_latent_blend", lambda *a: holds.append(real_blend(*a)) or holds[-1])
    body = family_job(tiny_models, frames, "flux", seed=15, steps=6, coherence={"mode": "FLOW"})
    flow = run(manager, body)
    assert [c["pipe"] for c in calls] == ["FluxControlNetPipeline", "FluxControlNetImg2ImgPipeline",
                                          "FluxControlNetImg2ImgPipeline"]
    assert flow.detail["keyframes"] == [1] and [type(h) for h in holds] == [FlowMatchBlendCallback] * 2
    assert tuple(holds[0].latents.shape) == (1, 64, 16) and tuple(holds[0].mask.shape) == (1, 64, 1)
    held = pixels(manager, flow)
    # The same job with the hold switched off, its frames taken out of the cache first.
    for key in flow.done.values():
        manager.storage.frame_path(key).unlink()
    monkeypatch.setattr(FlowMatchBlendCallback, "__call__", lambda self, pipe, step, t, tensors: tensors)
    free = pixels(manager, run(manager, body))
    steps = [round(float(np.abs(made[n] - made[n - 1]).mean()), 2) for made in (held, free) for n in (2, 3)]
    assert steps == pytest.approx([18.88, 13.99, 18.0, 11.81], abs=0.3), steps


def test_flux_flow_shots_interleave_in_one_img2img_call(manager: JobManager, tiny_models: dict[str, str],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two FLOW shots queued together on Flux share each pipeline call, two frames a call (the demo film's three
    shots do). diffusers' Flux img2img pipeline gives the union net's control mode to one frame only, so without
    ``variants.flux_multi`` the second frame's mode is missing and the call fails (``torch.cat``: sizes 1 and 2).
    The frames are the shots' run one after the other: on stock CPU kernels within the rounding of batching
    (test_interleave.py measures it for SD 1.5: at most 3 levels)."""
    from engine.contract.schema import JobRequest

    together = JobManager(Storage(tmp_path / "together"), default_device="cpu", max_pipelines=1)

    def both(data: bytes) -> str:  # the maps in both engines' stores
        upload(manager)(data)
        return upload(together)(data)

    frames = [{"frame": 1 + i, "depth": both(depth_png(0.2 * i)), "pose": both(pose_png(shift=i)),
               "flow": both(flow_npy(1.0))} for i in range(3)]
    bodies = [family_job(tiny_models, frames, "flux", seed=71 + i, steps=4, coherence={"mode": "FLOW"})
              for i in range(2)]
    calls = spy_calls(monkeypatch)
    jobs = [together.submit(JobRequest.model_validate(body)) for body in bodies]  # queued before the worker starts
    together.start()
    try:
        deadline = time.monotonic() + 300
        while any(j.status not in ("done", "failed", "cancelled") for j in jobs):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        together.stop()
    assert [j.status for j in jobs] == ["done", "done"], [j.error for j in jobs]
    assert [(c["pipe"], c["images"]) for c in calls] == [("FluxControlNetPipeline", 2)] + [
        ("FluxControlNetImg2ImgPipeline", 2)] * 2
    assert {j.detail["shots_interleaved"] for j in jobs} == {2}
    for body, job in zip(bodies, jobs, strict=True):
        alone = run(manager, body)
        assert alone.frame_keys == job.frame_keys
        worst = max(int(np.abs(read_png(together.storage.frame_path(k)).astype(np.int16)
                               - read_png(manager.storage.frame_path(k)).astype(np.int16)).max())
                    for k in job.frame_keys.values())
        assert worst <= 3, worst


@pytest.mark.parametrize("family, pipe", [("sdxl", "StableDiffusionXLControlNetUnionImg2ImgPipeline"),
                                          ("flux", "FluxControlNetImg2ImgPipeline")])
def test_finalize_take_on_each_family(manager: JobManager, tiny_models: dict[str, str],
                                      monkeypatch: pytest.MonkeyPatch, family: str, pipe: str) -> None:
    """Finalize Take (the final tier's 2x pass, engine/jobs/finalize.py) on SDXL and Flux.1: the family's union
    img2img pipeline details each enlarged approved frame with the depth map at 128 px, in timeline order; the
    low-strength pass keeps the approved content (the 2x frame, shrunk back, follows the approved one, as
    test_finalize.py asks of SD 1.5)."""
    from PIL import Image
    from test_finalize import BIG, FRAMES, SMALL, approved_frame, finalize_job, maps

    put = SimpleNamespace(upload_blob=upload(manager))
    calls = spy_calls(monkeypatch)
    body = finalize_job(tiny_models, [maps(put, n) for n in range(1, FRAMES + 1)], None)
    body["models"] = family_job(tiny_models, [], family)["models"]
    if family == "flux":
        body["guidance_scale"] = 3.5
    job = run(manager, body)
    assert job.detail["keyframes"] == [1] and job.detail["upscaler"] == "Lanczos resize"
    assert {c["pipe"] for c in calls} == {pipe} and len(calls) == FRAMES
    for n, image in pixels(manager, job).items():
        assert image.shape == (BIG, BIG, 3)
        shrunk = np.asarray(Image.fromarray(image.astype(np.uint8)).resize((SMALL, SMALL), Image.Resampling.BOX))
        assert np.corrcoef(shrunk.astype(float).ravel(), approved_frame(n).astype(float).ravel())[0, 1] > 0.6


def test_flow_match_hold_is_diffusers_forward_process() -> None:
    """The held latents after a step are the warped frame's noised to the schedule's next sigma exactly as
    diffusers' own ``FlowMatchEulerDiscreteScheduler.scale_noise`` noises them; only where the mask is 1."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from engine.models.callbacks import FlowMatchBlendCallback

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(6)
    scheduler.set_begin_index(0)
    generator = torch.Generator().manual_seed(0)
    warped, noise, current = (torch.randn(1, 4, 8, generator=generator) for _ in range(3))
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0])[None, :, None]
    hold = FlowMatchBlendCallback(warped, mask, noise, until=0.9)
    pipe = type("Pipe", (), {"scheduler": scheduler, "num_timesteps": 6})()
    scheduler.step(torch.zeros_like(current), scheduler.timesteps[0], current)  # step 0 done: index 1
    out = hold(pipe, 0, scheduler.timesteps[0], {"latents": current.clone()})["latents"]
    expected = scheduler.scale_noise(warped, scheduler.timesteps[1:2], noise)
    assert torch.allclose(out[:, [0, 1, 3]], expected[:, [0, 1, 3]]) and torch.equal(out[:, 2], current[:, 2])
