"""Normal, line-art and segmentation maps (issue 23, engine side) with tiny models on the CPU.

The request fields and their checks, the per-frame resolution of weights and per-map ranges, the
seg colours (controlnet-aux's ADE20K palette, exactly), what reaches the diffusers call (nets, scales,
starts/ends, images) on every runner, a depth + pose job that loads none of the new nets, and the
whole path over HTTP on a real engine process: frames, the cache, cancel, the maps refused at submit.
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings
from typing import Any

import numpy as np
import pytest
from engine_testlib import SIZE, depth_png, make_job, pose_png, read_png, wait_for
from PIL import Image
from pydantic import ValidationError

from engine.coherence.strategies import make_strategy
from engine.contract.schedule import frame_nets, frame_values
from engine.contract.schema import LINEART_PRESETS, MAP_KINDS, JobRequest, ModelSpec, field_path
from engine.jobs.keys import frame_key
from engine.jobs.manager import JobManager
from engine.jobs.runners import submit_job
from engine.models import batch as model_batch
from engine.models.codecs import decode_lineart, decode_normal, decode_seg, seg_colours
from engine.models.pipelines import NET_ORDER, PipelineKey, SpeedOptions
from engine.storage import Storage, remove_file

SHA = "a" * 64
EXTRA = ("normal", "lineart", "seg")


# Maps ------------------------------------------------------------------------------------


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def normal_array(phase: float = 0.0, size: int = SIZE) -> np.ndarray:
    """A sphere's camera-space normals, encoded round((n * 0.5 + 0.5) * 255), facing the camera outside it."""
    y, x = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size * 2 - 1
    x = x - 0.3 * phase
    z = np.sqrt(np.clip(1 - x * x - y * y, 0, 1))
    inside = x * x + y * y < 1
    n = np.where(inside[..., None], np.stack([x, -y, z], -1), np.array([0, 0, 1], np.float32))
    return np.rint((n * 0.5 + 0.5) * 255).astype(np.uint8)


def lineart_array(shift: int = 0, size: int = SIZE) -> np.ndarray:
    """White one-pixel lines on black (mode L): a box outline and a diagonal."""
    a = np.zeros((size, size), np.uint8)
    lo, hi = 12 + shift, 48 + shift
    a[lo, lo:hi] = a[hi, lo:hi] = a[lo:hi + 1, lo] = a[lo:hi + 1, hi] = 255
    a[np.arange(size), np.arange(size)] = 255
    return a


def seg_array(size: int = SIZE) -> np.ndarray:
    """ADE20K class indices (mode L): sky (2) above, building (1), a person (12), the floor unlabeled (255)."""
    a = np.full((size, size), 2, np.uint8)
    a[size // 3:] = 1
    a[size // 3:, size // 3: size // 2] = 12
    a[size * 7 // 8:] = 255
    return a


def all_maps(put: Any, i: int) -> dict[str, str]:
    """Frame ``i``'s five maps uploaded with ``put`` (bytes -> sha)."""
    return {"depth": put(depth_png(0.2 * i)), "pose": put(pose_png(shift=i)), "normal": put(png(normal_array(i))),
            "lineart": put(png(lineart_array(i))), "seg": put(png(seg_array()))}


def tiny_spec(tiny_models: dict[str, str]) -> dict[str, Any]:
    return {"base": tiny_models["base"], **{f"controlnet_{k}": tiny_models[k] for k in MAP_KINDS}}


# Request fields ----------------------------------------------------------------------------


def test_model_defaults_presets_and_map_kinds() -> None:
    spec = ModelSpec()
    assert spec.controlnet_normal == "lllyasviel/control_v11p_sd15_normalbae"
    assert spec.controlnet_lineart == "lllyasviel/control_v11p_sd15_lineart"
    assert spec.controlnet_seg == "lllyasviel/control_v11p_sd15_seg"
    assert LINEART_PRESETS == {"lineart": "lllyasviel/control_v11p_sd15_lineart",
                               "canny": "lllyasviel/control_v11p_sd15_canny",
                               "mlsd": "lllyasviel/control_v11p_sd15_mlsd"}
    assert NET_ORDER == MAP_KINDS == ("depth", "pose", "normal", "lineart", "seg")
    plain = JobRequest(frames=[{"frame": 1}])
    assert plain.map_kinds() == ("depth", "pose", "normal", "lineart", "seg")
    assert JobRequest(frames=[{"frame": 1}], coherence={"mode": "FLOW"}).map_kinds()[-1] == "flow"
    assert (plain.normal_weight, plain.lineart_weight, plain.seg_weight, plain.control_ranges) == (1.0, 1.0, 1.0, {})


@pytest.mark.parametrize("body, field, words", [
    ({"control_ranges": {"normall": [0.0, 1.0]}}, "control_ranges.normall", "'lineart'"),
    ({"control_ranges": {"seg": [0.5, 1.2]}}, "control_ranges.seg[1]", "less than or equal to 1"),
    ({"control_ranges": {"seg": [0.5]}}, "control_ranges.seg[1]", "required"),
    ({"control_ranges": {"seg": [0.5, 0.2]}}, "control_ranges.seg", "start 0.5 must be smaller than end 0.2"),
    ({"frames": [{"frame": 1}, {"frame": 2, "control_ranges": {"lineart": [0.7, 0.7]}}]},
     "frames[1].control_ranges.lineart", "start 0.7 must be smaller than end 0.7"),
    ({"frames": [{"frame": 1, "normal_weight": 2.5}]}, "frames[0].normal_weight", "less than or equal to 2"),
    ({"seg_weight": -0.1}, "seg_weight", "greater than or equal to 0"),
    ({"frames": [{"frame": 1, "seg": "not-a-sha"}]}, "frames[0].seg", "sha256"),
    ({"frames": [{"frame": 1, "normals": SHA}]}, "frames[0].normals", "Extra inputs"),
    ({"models": {"controlnet_segm": "x"}}, "models.controlnet_segm", "Extra inputs"),
])
def test_bad_fields_name_the_field(body: dict[str, Any], field: str, words: str) -> None:
    """Every refusal names the JSON field (the server turns a model-level message's prefix into it)."""
    from engine.api.server import _invalid

    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate({"frames": [{"frame": 1}], **body})
    fault = _invalid(list(info.value.errors()))
    assert (fault.status, fault.code, fault.field) == (422, "invalid_field", field), fault.message
    assert words in fault.message
    assert field_path(("body", "control_ranges", "x", "[key]")) == "control_ranges.x"


def test_ranges_and_weights_resolve_frame_over_job_over_start_end() -> None:
    """frame.control_ranges[kind] > request.control_ranges[kind] > frame control_start/end > the job's."""
    req = JobRequest(frames=[
        {"frame": 1},
        {"frame": 2, "control_start": 0.3, "normal_weight": 0.25},
        {"frame": 3, "control_start": 0.3, "control_ranges": {"seg": [0.1, 0.2], "pose": [0.0, 0.4]}},
    ], control_start=0.05, control_end=0.95, normal_weight=0.5, lineart_weight=1.5,
        control_ranges={"seg": [0.0, 0.5], "depth": [0.05, 0.95]})
    got = {f.frame: {k: frame_values(req, f).control_range(k) for k in MAP_KINDS} for f in req.frames}
    assert got == {
        1: {"depth": (0.05, 0.95), "pose": (0.05, 0.95), "normal": (0.05, 0.95), "lineart": (0.05, 0.95),
            "seg": (0.0, 0.5)},
        2: {"depth": (0.05, 0.95), "pose": (0.3, 0.95), "normal": (0.3, 0.95), "lineart": (0.3, 0.95),
            "seg": (0.0, 0.5)},
        3: {"depth": (0.05, 0.95), "pose": (0.0, 0.4), "normal": (0.3, 0.95), "lineart": (0.3, 0.95),
            "seg": (0.1, 0.2)},
    }
    weights = {f.frame: [frame_values(req, f).weight(k) for k in EXTRA] for f in req.frames}
    assert weights == {1: [0.5, 1.5, 1.0], 2: [0.25, 1.5, 1.0], 3: [0.5, 1.5, 1.0]}
    # A range equal to the frame's start/end is no override (frame 1's depth): it keys as before.
    assert [k for k, *_ in frame_values(req, req.frames[0]).ranges] == ["seg"]


KEY = PipelineKey(base="b", depth="d", pose="p", lora=None, lora_scale=0.0, device="cpu", dtype="float32",
                  attention_slicing=False, cpu_offload=False)
KEY5 = PipelineKey(base="b", depth="d", pose="p", lora=None, lora_scale=0.0, device="cpu", dtype="float32",
                   attention_slicing=False, cpu_offload=False, normal="n", lineart="l", seg="s")


def key_of(key: PipelineKey, frame: dict[str, Any], **job: Any) -> str:
    req = JobRequest(frames=[frame], **job)
    return frame_key(req, key, make_strategy(req.coherence), req.frames[0])


def test_frame_keys_change_only_with_what_a_frame_runs() -> None:
    """A frame keys as before issue 23 unless it runs a new net; then its map, net, weight and range count."""
    plain = {"frame": 1, "depth": SHA, "pose": SHA}
    old = key_of(KEY, plain)
    # The key the engine before issue 23 (57a3eca) gave this frame: a new ALGORITHM_VERSION changes it.
    assert old == "0b10a2a163b8532d7e9513257abfef64a3b91456a7798b40ed4e8869bda03c41"
    # Job-level new values, ranges equal to the default, the new nets loaded for other frames: same key.
    assert key_of(KEY5, plain, normal_weight=0.3, control_ranges={"seg": [0.2, 0.4], "depth": [0.0, 1.0]}) == old
    # A normal map at weight 0 drops the net: the frame made without it.
    assert key_of(KEY5, {**plain, "normal": "b" * 64, "normal_weight": 0.0}) == old
    with_normal = key_of(KEY5, {**plain, "normal": "b" * 64})
    assert with_normal != old
    changed = [key_of(KEY5, {**plain, "normal": "c" * 64}),
               key_of(KEY5, {**plain, "normal": "b" * 64, "normal_weight": 0.9}),
               key_of(KEY5, {**plain, "normal": "b" * 64}, control_ranges={"normal": [0.0, 0.5]}),
               key_of(KEY5, {**plain, "normal": "b" * 64}, control_ranges={"depth": [0.0, 0.5]}),
               key_of(PipelineKey(**{**KEY5.__dict__, "normal": "n2"}), {**plain, "normal": "b" * 64})]
    assert len({with_normal, *changed}) == 6
    # The normal map's range, when the frame has no normal map: nothing.
    assert key_of(KEY5, plain, control_ranges={"normal": [0.0, 0.5]}) == old


def test_frame_nets_follow_the_maps_a_frame_has() -> None:
    req = JobRequest(frames=[{"frame": 1, "depth": SHA, "normal": SHA, "seg": SHA},
                             {"frame": 2, "pose": SHA, "normal": SHA, "normal_weight": 0.0, "lineart": SHA},
                             {"frame": 3, "depth": SHA, "depth_weight": 0.0}])
    nets = [frame_nets(f, frame_values(req, f), NET_ORDER) for f in req.frames]
    assert nets == [("depth", "normal", "seg"), ("pose", "lineart"), ("depth",)]
    assert frame_nets(req.frames[0], frame_values(req, req.frames[0]), ("depth", "pose")) == ("depth",)


# Decoding -------------------------------------------------------------------------------------


def test_seg_colours_are_controlnet_aux_ade_palette_exactly() -> None:
    """Every class 0..149 in controlnet-aux's own colour, 255 black, through the PNG decoder too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # controlnet_aux imports every annotator, each with its warnings
        from controlnet_aux.util import ade_palette

    palette = np.asarray(ade_palette(), dtype=np.uint8)
    indices = np.concatenate([np.arange(150), [255, 255]]).astype(np.uint8).reshape(8, 19)
    colours = seg_colours(indices)
    assert np.array_equal(colours.reshape(-1, 3)[:150], palette)
    assert np.array_equal(colours.reshape(-1, 3)[150:], np.zeros((2, 3), np.uint8))
    # Pinned, so a palette that moved under the same import would be seen: wall, building, sky, person.
    assert [list(palette[i]) for i in (0, 1, 2, 12)] == [[120, 120, 120], [180, 120, 120], [6, 230, 230],
                                                         [150, 5, 61]]
    assert hashlib.sha256(palette.tobytes()).hexdigest() == \
        "ce475c9151035eff51f4cf27fd7d906959b1480f6d15b9423ae2417c1b23a0ed"
    tensor = decode_seg(png(indices), (19, 8))
    assert tensor.shape == (3, 8, 19)
    assert np.array_equal(np.rint(tensor.permute(1, 2, 0).numpy() * 255).astype(np.uint8), colours)


def test_lineart_is_grey_in_three_channels_and_normal_is_rgb() -> None:
    lines = lineart_array()
    tensor = decode_lineart(png(lines), (SIZE, SIZE))
    assert tensor.shape == (3, SIZE, SIZE)
    assert all(np.array_equal(np.rint(tensor[c].numpy() * 255), lines) for c in range(3))
    normals = normal_array(0.5)
    tensor = decode_normal(png(normals), (SIZE, SIZE))
    assert np.array_equal(np.rint(tensor.permute(1, 2, 0).numpy() * 255).astype(np.uint8), normals)
    # The background encodes the normal facing the camera: (128, 128, 255).
    assert list(normals[0, 0]) == [128, 128, 255]


# What reaches the pipeline (in-process engine) ------------------------------------------------------


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An in-process engine: its loaded pipelines and its pipeline calls can be inspected."""
    jm = JobManager(Storage(tmp_path_factory.mktemp("maps-engine")), default_device="cpu", max_pipelines=3)
    jm.start()
    yield jm
    jm.stop()


def put(jm: JobManager) -> Any:
    def upload(data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        jm.storage.put_blob(sha, data)
        return sha
    return upload


def run(jm: JobManager, body: dict[str, Any], status: str = "done") -> Any:
    """Submit ``body`` to the in-process engine and wait (at most 300 s) until it ends in ``status``."""
    job = jm.submit(JobRequest.model_validate(body))
    deadline = time.monotonic() + 300
    while job.status not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline, job.to_json()
        time.sleep(0.05)
    assert job.status == status, job.to_json()
    return job


def spy_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every pipeline call's ControlNet arguments, with the nets of the variant by name."""
    calls: list[dict[str, Any]] = []
    real = model_batch._call_models

    def spy(models: Any, pipe: Any, cancel: Any, **kwargs: Any) -> Any:
        by_id = {id(net): name for name, net in models.nets.items()}
        net = getattr(pipe, "controlnet", None)
        nets = [] if net is None else [by_id[id(n)] for n in getattr(net, "nets", [net])]
        image = kwargs.get("image" if "control_image" not in kwargs else "control_image")
        calls.append({"nets": nets, "scale": kwargs.get("controlnet_conditioning_scale"),
                      "start": kwargs.get("control_guidance_start"), "end": kwargs.get("control_guidance_end"),
                      "images": image if isinstance(image, list) else [image],
                      "img2img": "strength" in kwargs})
        return real(models, pipe, cancel, **kwargs)

    monkeypatch.setattr(model_batch, "_call_models", spy)
    return calls


def test_weights_ranges_and_maps_reach_the_pipeline_call(manager: JobManager, tiny_models: dict[str, str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-map scales, starts and ends in NET_ORDER; a frame without a normal map (or at weight 0) runs without
    that net; the seg map arrives in ADE20K colours and the line art in three equal channels."""
    upload = put(manager)
    frames = [{"frame": i + 1, **all_maps(upload, i)} for i in range(3)]
    frames[0].update(lineart_weight=1.5, control_ranges={"lineart": [0.2, 0.6]})
    del frames[1]["normal"]
    frames[2].update(normal_weight=0.0, control_start=0.3)
    body = make_job(tiny_models, frames, batch_size=4, depth_weight=0.9, pose_weight=0.8, normal_weight=0.7,
                    lineart_weight=0.6, seg_weight=0.5, control_ranges={"normal": [0.1, 0.9], "seg": [0.0, 0.5]})
    body["models"] = tiny_spec(tiny_models)
    calls = spy_calls(monkeypatch)
    job = run(manager, body)
    assert job.key.net_kinds() == MAP_KINDS
    got = sorted(([c["nets"], c["scale"], c["start"], c["end"]] for c in calls), key=lambda c: (-len(c[0]), c[2]))
    assert got == [
        [["depth", "pose", "normal", "lineart", "seg"], [0.9, 0.8, 0.7, 1.5, 0.5], [0.0, 0.0, 0.1, 0.2, 0.0],
         [1.0, 1.0, 0.9, 0.6, 0.5]],
        [["depth", "pose", "lineart", "seg"], [0.9, 0.8, 0.6, 0.5], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.5]],
        [["depth", "pose", "lineart", "seg"], [0.9, 0.8, 0.6, 0.5], [0.3, 0.3, 0.3, 0.0], [1.0, 1.0, 1.0, 0.5]],
    ]
    full = next(c for c in calls if len(c["nets"]) == 5)
    seg = full["images"][4][0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.rint(seg * 255).astype(np.uint8), seg_colours(seg_array()))
    lines = full["images"][3][0].numpy()
    assert np.array_equal(lines[0], lines[1]) and np.array_equal(np.rint(lines[2] * 255), lineart_array(0))


def test_frame_without_normal_is_the_frame_made_without_the_net(manager: JobManager, tiny_models: dict[str, str]
                                                               ) -> None:
    """Frame 2 has no normal map: it keys, and is made, exactly as in a job whose pipeline has no normal net."""
    upload = put(manager)
    frames = [{"frame": i + 1, **all_maps(upload, i)} for i in range(2)]
    del frames[1]["normal"]
    body = make_job(tiny_models, frames, seed=77)
    body["models"] = tiny_spec(tiny_models)
    first = run(manager, body)
    with_net = manager.get(first.id)
    path = manager.storage.frame_path(with_net.done[2])
    with Image.open(path) as img:
        made_beside_normal = np.asarray(img.convert("RGB")).copy()
    remove_file(path)  # made again below, by a pipeline that has no normal net at all
    alone = make_job(tiny_models, frames[1:], seed=77)
    alone["models"] = {**tiny_spec(tiny_models), "controlnet_normal": None}
    second = run(manager, alone)
    assert second.key.normal is None and first.key.normal is not None
    assert second.frame_keys[2] == first.frame_keys[2] and not second.cached
    with Image.open(manager.storage.frame_path(second.done[2])) as img:
        assert np.array_equal(np.asarray(img.convert("RGB")), made_beside_normal)


def test_depth_pose_job_loads_no_new_nets(manager: JobManager, tiny_models: dict[str, str]) -> None:
    """The default Hub ids of the new nets are not even resolved; key and memory are the old ones."""
    upload = put(manager)
    frames = [{"frame": 1, "depth": upload(depth_png(0.4)), "pose": upload(pose_png())}]
    job = run(manager, make_job(tiny_models, frames, seed=5))
    assert set(job.refs) == {"base", "depth", "pose"}
    old_fields = {"base", "depth", "pose", "lora", "lora_scale", "device", "dtype", "attention_slicing",
                  "cpu_offload", "channels_last", "fused_qkv", "compile"}
    assert job.key == PipelineKey(**{name: getattr(job.key, name) for name in old_fields})
    models, cached = manager.pipelines.get(job.key, lambda: pytest.fail("the job's pipeline was unloaded"))
    assert cached and list(models.nets) == ["depth", "pose"]
    params = sum(p.numel() for net in models.nets.values() for p in net.parameters())
    assert params == 2 * sum(p.numel() for p in models.nets["depth"].parameters())


def test_flow_finalize_and_draft_pass_the_new_maps(manager: JobManager, tiny_models: dict[str, str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """FLOW (keyframe and carried img2img), Finalize's detail pass and the draft tier run the same nets."""
    upload = put(manager)
    flow = io.BytesIO()
    np.save(flow, np.zeros((SIZE, SIZE, 2), np.float32))
    flow_sha = upload(flow.getvalue())
    frames = [{"frame": i + 1, **all_maps(upload, i), "flow": flow_sha} for i in range(2)]
    for frame in frames:
        del frame["pose"]
    models = {**tiny_spec(tiny_models), "controlnet_pose": None}
    calls = spy_calls(monkeypatch)
    # 1. FLOW: the keyframe from noise, the next frame img2img from the warped keyframe.
    run(manager, {**make_job(tiny_models, frames, seed=21, steps=4, seg_weight=0.4,
                             coherence={"mode": "FLOW", "strength": 0.5}), "models": models})
    # 2. Finalize: the approved frames detailed by img2img guided by the maps.
    sources = [{**f, "source": upload(png(np.full((SIZE, SIZE, 3), 90 + 40 * i, np.uint8)))}
               for i, f in enumerate(frames)]
    run(manager, {**make_job(tiny_models, sources, seed=22, steps=4, seg_weight=0.4,
                             finalize={"upscaler": None, "detail_strength": 0.5}), "models": models})
    # 3. Draft: the LCM LoRA path through run_batch.
    run(manager, {**make_job(tiny_models, frames[:1], seed=23, seg_weight=0.4, tier="draft",
                             draft={"lora": tiny_models["draft_lora"]}), "models": models})
    assert [c["img2img"] for c in calls] == [False, True, True, True, False]
    for call in calls:
        assert call["nets"] == ["depth", "normal", "lineart", "seg"]
        assert call["scale"] == [1.0, 1.0, 1.0, 0.4]
        assert len(call["images"]) == 4


def test_video_jobs_ignore_the_new_maps(manager: JobManager, tiny_models: dict[str, str]) -> None:
    """A VIDEO job that carries the new fields is keyed and checked exactly as one without them."""
    upload = put(manager)
    plain = [{"frame": i + 1, "depth": upload(depth_png(0.1 * i))} for i in range(3)]
    extra = [{**f, "normal": upload(png(normal_array(i))), "seg": upload(png(seg_array())), "normal_weight": 0.5,
              "control_ranges": {"normal": [0.0, 0.5]}} for i, f in enumerate(plain)]
    jobs = []
    for frames, more in ((plain, {}), (extra, {"seg_weight": 0.2, "control_ranges": {"seg": [0.1, 0.3]}})):
        body = {**make_job(tiny_models, frames, generator="VIDEO", **more),
                "video": {"pipeline": "ANIMATEDIFF", "motion_adapter": tiny_models["motion_adapter"], "window": 8}}
        body["models"] = {"base": tiny_models["base"], "controlnet_depth": tiny_models["depth"],
                          "controlnet_pose": None}
        jobs.append(submit_job(JobRequest.model_validate(body), manager.storage, lambda d: "cpu", SpeedOptions()))
    assert jobs[0].key == jobs[1].key and jobs[0].frame_keys == jobs[1].frame_keys


# Over HTTP, a real engine process -----------------------------------------------------------


@pytest.mark.engine
def test_five_maps_end_to_end_cache_and_cancel(client: Any, tiny_models: dict[str, str], tmp_path: Any) -> None:
    frames = [{"frame": 11 + i, **all_maps(client.upload_blob, i)} for i in range(3)]
    del frames[2]["normal"]
    job = make_job(tiny_models, frames, seed=321, normal_weight=0.8, control_ranges={"seg": [0.0, 0.6]})
    job["models"] = tiny_spec(tiny_models)
    status = wait_for(client, client.submit(job))
    assert status["status"] == "done" and status["frames"] == [11, 12, 13], status
    made = {n: read_png(client.fetch_frame(status["id"], n, str(tmp_path / f"{n}.png"))) for n in status["frames"]}
    # The same frames from depth and pose alone differ: the new nets change the pixels.
    plain = make_job(tiny_models, [{k: f[k] for k in ("frame", "depth", "pose")} for f in frames], seed=321)
    alone = wait_for(client, client.submit(plain))
    differences = [float(np.abs(made[n].astype(np.int16) - read_png(client.fetch_frame(
        alone["id"], n, str(tmp_path / f"plain{n}.png"))).astype(np.int16)).mean()) for n in (11, 12, 13)]
    # Mean absolute difference in levels of 255 (tiny random models, CPU float32; measured 7.21, 7.21, 6.65):
    # pinned within float noise across CPUs, so a net that stops reaching the frames is seen.
    assert differences == pytest.approx([7.21, 7.21, 6.65], abs=0.3), differences
    # A repeat is answered from the cache, whatever the batch size.
    again = client.submit_full({**job, "batch_size": 1})
    assert again["status"] == "done" and again["cached_frames"] == [11, 12, 13]
    # Cancel mid-job: finished frames kept, a resubmit makes only the rest.
    long = {**job, "seed": 322, "steps": 20, "batch_size": 1}
    job_id = client.submit(long)
    deadline = time.monotonic() + 120
    while client.status(job_id)["frames_done"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    client.cancel(job_id)
    cancelled = wait_for(client, job_id)
    assert cancelled["status"] == "cancelled" and 1 <= cancelled["frames_done"] < 3, cancelled
    resumed = client.submit_full(long)
    assert resumed["cached_frames"] == cancelled["frames"]
    assert wait_for(client, resumed["id"])["status"] == "done"


@pytest.mark.engine
@pytest.mark.parametrize("kind, array, code, words", [
    ("seg", np.where(seg_array() == 1, 200, seg_array()).astype(np.uint8), "bad_map", "class index 200"),
    ("seg", np.zeros((SIZE, SIZE, 3), np.uint8), "bad_map", "mode RGB"),
    ("lineart", np.stack([lineart_array()] * 3, -1), "bad_map", "mode RGB"),
    ("lineart", lineart_array(size=SIZE * 2), "map_size_mismatch", "128x128"),
    ("normal", normal_array(size=SIZE // 2), "map_size_mismatch", "32x32"),
    ("normal", lineart_array(), "bad_map", "mode L"),
])
def test_bad_maps_are_refused_at_submit_naming_the_frame(core: Any, client: Any, tiny_models: dict[str, str],
                                                         kind: str, array: np.ndarray, code: str, words: str) -> None:
    frames = [{"frame": 1 + i, **all_maps(client.upload_blob, i)} for i in range(2)]
    frames[1][kind] = client.upload_blob(png(array))
    job = make_job(tiny_models, frames)
    job["models"] = tiny_spec(tiny_models)
    with pytest.raises(core.client.EngineError) as info:
        client.submit(job)
    error = info.value
    assert (error.status, error.code, error.field) == (400, code, f"frames[1].{kind}"), error
    assert words in error.message and error.message.startswith(f"frames[1].{kind}: ")


def test_a_frame_with_every_field_passes_the_key_count() -> None:
    """The pre-parse bound on keys (engine/api/limits.py) holds a shot whose frames send every field."""
    import json

    from engine.api import limits
    from engine.contract.schema import FrameSpec

    frame = {name: None for name in FrameSpec.model_fields}
    frame.update(frame=1, control_ranges={k: [0, 1] for k in MAP_KINDS})
    body = json.dumps({"frames": [{**frame, "frame": n} for n in range(1, 2001)]}).encode()
    limits.check_key_count(body)
    assert len(frame) + len(MAP_KINDS) <= limits.KEYS_PER_FRAME
