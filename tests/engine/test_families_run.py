"""Every family end to end on tiny models (issue 24): SDXL with its union ControlNet, Flux.1 with its own, single
files, LoRAs in both layouts, characters, the draft tier; over HTTP (a job, its frames, the cache, cancel) and
in process, where what reaches the pipeline call is checked.

Figures are mean absolute differences in levels of 255 between frames made with and without something (a map,
a LoRA, a character), on tiny random models in float32 on a CPU: pinned within float noise across CPUs, so a
map, mode or LoRA that stops reaching the frames is seen.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_testlib import depth_png, make_job, pose_png, read_png, wait_for
from test_maps import all_maps, lineart_array, png

from engine.contract.schema import JobRequest
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


def upload(jm: JobManager) -> Any:
    def put(data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        jm.storage.put_blob(sha, data)
        return sha
    return put


def run(jm: JobManager, body: dict[str, Any], status: str = "done") -> Any:
    job = jm.submit(JobRequest.model_validate(body))
    deadline = time.monotonic() + 300
    while job.status not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline, job.to_json()
        time.sleep(0.05)
    assert job.status == status, job.to_json()
    return job


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
