"""Model families (issue 24, engine/models/families.py): the table, and every model checked against it at submit.

The family table and its union modes; SD 1.5 requests keep their pipeline and frame keys exactly; what a
safetensors header tells (engine/models/headers.py) about the tiny models' single files, LoRAs in kohya and
diffusers layouts, plain and union ControlNets; and each bad input refused at submit, before anything is
loaded, with the field, the file and the fix. The families running end to end are in test_families_run.py.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest
from engine_testlib import depth_png, make_job, pose_png

from engine.coherence.strategies import make_strategy
from engine.contract.errors import EngineFault
from engine.contract.schema import JobRequest
from engine.jobs.keys import frame_key, request_digest
from engine.jobs.runners import submit_job
from engine.jobs.submit import pipeline_key, resolve_models
from engine.models import headers
from engine.models.families import CAPABILITIES, FAMILIES, FLUX_UNION_MODES, SDXL_UNION_MODES
from engine.models.pipelines import PipelineKey, SpeedOptions
from engine.storage import Storage

# The table ------------------------------------------------------------------------------------------------


def test_union_modes_are_the_published_ones() -> None:
    """xinsir6/ControlNetPlus README "ControlMode" and InstantX's Flux union model card (cited in families.py)."""
    assert SDXL_UNION_MODES == {"pose": 0, "depth": 1, "lineart": 3, "normal": 4, "seg": 5}
    assert FLUX_UNION_MODES == {"lineart": 0, "depth": 2, "pose": 4}
    assert FAMILIES["sdxl"].maps == ("depth", "pose", "normal", "lineart", "seg")
    assert FAMILIES["flux"].maps == ("depth", "pose", "lineart")


def test_capability_table() -> None:
    """The README's table: True where the tests run it, the reason where the family cannot."""
    table = {name: {c: v is True for c, v in fam.capabilities().items()} for name, fam in FAMILIES.items()}
    assert table == {
        "sd15": {**dict.fromkeys(CAPABILITIES, True), "union_controlnet": False},
        "sdxl": dict.fromkeys(CAPABILITIES, True),
        "flux": {"per_map_controlnets": False, "union_controlnet": True, "regional_characters": False,
                 "ip_adapter_masks": False, "lora": True, "draft": False, "flow": True, "prompt_travel": True,
                 "single_file": False},
    }
    assert "joint" in FAMILIES["flux"].why_not["regional_characters"]
    assert [(f.default_size, f.side_multiple) for f in FAMILIES.values()] == [((512, 512), 8), ((1024, 1024), 8),
                                                                            ((1024, 1024), 16)]


def test_family_field_defaults_and_refusals() -> None:
    request = JobRequest(frames=[{"frame": 1}])
    assert (request.models.family, request.models.controlnet_union, request.models.base_config) == ("sd15", None, None)
    with pytest.raises(ValueError, match="'sd15', 'sdxl' or 'flux'"):
        JobRequest(frames=[{"frame": 1}], models={"family": "sd3"})


def test_sd15_pipeline_and_frame_keys_do_not_change() -> None:
    """Keys computed before issue 24 (commit b5826e9) for a FLOW job with depth, pose and a normal map."""
    request = JobRequest.model_validate({
        "shot": "s", "prompt": "a red car", "seed": 7, "steps": 4, "width": 64, "height": 64,
        "frames": [{"frame": 1, "depth": "a" * 64, "pose": "b" * 64},
                   {"frame": 2, "depth": "c" * 64, "normal": "d" * 64, "normal_weight": 0.5}],
        "coherence": {"mode": "FLOW"}})
    refs, lora = resolve_models(request)
    key = pipeline_key(request, refs, lora, "cpu", SpeedOptions())
    before = dict(base="hub:stable-diffusion-v1-5/stable-diffusion-v1-5:",
                  depth="hub:lllyasviel/control_v11f1p_sd15_depth:", pose="hub:lllyasviel/control_v11p_sd15_openpose:",
                  lora=None, lora_scale=0.0, device="cpu", dtype="float32", attention_slicing=False, cpu_offload=False,
                  channels_last=False, fused_qkv=False, compile="", normal="hub:lllyasviel/control_v11p_sd15_normalbae:")
    assert key == PipelineKey(**before)  # type: ignore[arg-type]
    strategy, previous, keys = make_strategy(request.coherence), None, []
    for frame in strategy.order(request.frames):
        previous = frame_key(request, key, strategy, frame, previous)
        keys.append(previous)
    assert keys == ["ddc0b0fe165cb4e2dda3a0bbf09ad96a087610d7b1c6dd040f6ed1f651d7ad44",
                    "c6addf3dc0447cc0517040ae9c757b7882617f7540d412b2d0df719cd57af7df"]
    # Another family, or a union net, changes the job-wide part of every key.
    sdxl = PipelineKey(**{**before, "family": "sdxl"})  # type: ignore[arg-type]
    assert request_digest(request, sdxl) != request_digest(request, key)


# What a header tells ------------------------------------------------------------------------------------


def test_headers_tell_the_tiny_models_apart(tiny_models: dict[str, str]) -> None:
    shapes = {name: headers.read_shapes(tiny_models[name]) for name in (
        "sd15_file", "sdxl_file", "lora", "draft_lora", "sdxl_lora", "sdxl_lora_kohya", "flux_lora")}
    assert headers.checkpoint_family(shapes["sd15_file"]) == headers.Identified(
        "sd15", 32, evidence="cond_stage_model.transformer.text_model.embeddings.position_embedding.weight")
    found = headers.checkpoint_family(shapes["sdxl_file"])
    assert (found.family, found.width, found.evidence.startswith("conditioner.embedders.1.model.")) == (
        "sdxl", 80, True)
    lora = {name: headers.lora_family(shapes[name]) for name in shapes if "lora" in name}
    # SD 1.5 LoRAs at the tiny width (32) are told by width only against the base (their layout is shared).
    assert {name: (f.family, f.width) for name, f in lora.items()} == {
        "lora": (None, 32), "draft_lora": (None, 32), "sdxl_lora": (None, 80), "sdxl_lora_kohya": ("sdxl", 80),
        "flux_lora": ("flux", None)}
    union = Path(tiny_models["union_sdxl"]) / "diffusion_pytorch_model.safetensors"
    plain = Path(tiny_models["sdxl_depth"]) / "diffusion_pytorch_model.safetensors"
    flux = Path(tiny_models["union_flux"]) / "diffusion_pytorch_model.safetensors"
    assert [(f.family, f.width, f.union) for f in map(headers.controlnet_family, map(headers.read_shapes, (
        union, plain, flux)))] == [("sdxl", 80, True), ("sdxl", 80, False), ("flux", 32, True)]


def test_a_file_that_is_not_safetensors_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(headers.NotSafetensors, match="no safetensors header"):
        headers.read_shapes(junk)


# Refused at submit, before anything is loaded --------------------------------------------------------------


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Storage:
    return Storage(tmp_path_factory.mktemp("families-submit"))


def maps(storage: Storage, n: int = 2) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        frame: dict[str, Any] = {"frame": i + 1}
        for kind, data in (("depth", depth_png(0.2 * i)), ("pose", pose_png(i))):
            frame[kind] = hashlib.sha256(data).hexdigest()
            storage.put_blob(frame[kind], data)
        out.append(frame)
    return out


def refused(storage: Storage, body: dict[str, Any]) -> EngineFault:
    """The submit's refusal, with nothing loaded meanwhile: no pipeline, model or weight file opened, no module
    moved to a device (each fails the test if called)."""
    import diffusers
    import safetensors.torch
    import torch
    from diffusers.loaders import FromOriginalModelMixin, FromSingleFileMixin

    def loads(*_: Any, **__: Any) -> None:
        raise AssertionError("a model was loaded at submit")

    with pytest.MonkeyPatch.context() as patch:
        for owner, name in ((diffusers.DiffusionPipeline, "from_pretrained"), (diffusers.ModelMixin, "from_pretrained"),
                            (FromSingleFileMixin, "from_single_file"), (FromOriginalModelMixin, "from_single_file"),
                            (safetensors.torch, "load_file"),
                            (torch.nn.Module, "to")):
            patch.setattr(owner, name, loads)
        with pytest.raises(EngineFault) as info:
            submit_job(JobRequest.model_validate(body), storage, lambda d: "cpu", SpeedOptions())
    return info.value


def body(tiny_models: dict[str, str], storage: Storage, family: str, **models: Any) -> dict[str, Any]:
    job = make_job(tiny_models, maps(storage))
    base = {"sd15": tiny_models["base"], "sdxl": tiny_models["sdxl"], "flux": tiny_models["flux"]}[family]
    union = {"sdxl": tiny_models["union_sdxl"], "flux": tiny_models["union_flux"]}.get(family)
    job["models"] = {**job["models"], "family": family, "base": base, **({"controlnet_union": union} if union else {}),
                     **models}
    return job


def unknown_file(tmp_path: Path) -> str:
    """A safetensors file with weights of no known model (a VAE alone, say)."""
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "mystery.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, str(path))
    return str(path)


CASES = [
    # (family, models overrides (names of tiny_models entries, or literal values), other fields, field, code, words)
    ("sd15", {"base": "sdxl"}, {}, "models.base", "incompatible_model",
     "is a base model for SDXL (model_index.json: StableDiffusionXLPipeline), but models.family is 'sd15' (SD 1.5); "
     "send models.family 'sdxl'"),
    ("sd15", {"base": "sdxl_file"}, {}, "models.base", "incompatible_model", "for SDXL (conditioner.embedders.1.model."),
    ("sdxl", {"base": "base"}, {}, "models.base", "incompatible_model", "send models.family 'sd15'"),
    ("flux", {"base": "sdxl"}, {}, "models.base", "incompatible_model", "send models.family 'sdxl'"),
    ("sdxl", {"controlnet_union": None, "controlnet_depth": "union_sdxl"}, {}, "models.controlnet_depth",
     "incompatible_model", "is a union ControlNet (config.json: ControlNetUnionModel); give it as "
                           "models.controlnet_union"),
    ("sdxl", {"controlnet_union": "sdxl_depth"}, {}, "models.controlnet_union", "incompatible_model",
     "is a plain ControlNet (config.json: ControlNetModel with text_time embeddings)"),
    ("sdxl", {"controlnet_union": "union_flux"}, {}, "models.controlnet_union", "incompatible_model",
     "is a union ControlNet for Flux.1 (config.json: FluxControlNetModel with num_mode), but models.family is 'sdxl'"),
    ("flux", {"controlnet_union": "union_sdxl"}, {}, "models.controlnet_union", "incompatible_model",
     "for SDXL (config.json: ControlNetUnionModel)"),
    ("sdxl", {"controlnet_union": None}, {}, "models.controlnet_depth", "incompatible_model",
     "is a ControlNet for SD 1.5 (config.json: ControlNetModel), but models.family is 'sdxl'"),
    ("sdxl", {"controlnet_union": None, "controlnet_depth": "lllyasviel/control_v11f1p_sd15_depth"}, {},
     "models.controlnet_depth", "incompatible_model", "is an SD 1.5 ControlNet (the request's default)"),
    ("sd15", {"controlnet_union": "union_sdxl"}, {}, "models.controlnet_union", "unsupported_by_family",
     "no union ControlNet exists for SD 1.5"),
    ("flux", {"controlnet_union": None}, {}, "models.controlnet_union", "unsupported_by_family",
     "Flux takes its maps through one union ControlNet"),
    ("sdxl", {"lora": "lora"}, {}, "models.lora", "incompatible_model",
     "is a LoRA made for another model family (cross-attention width 32), but the base model is SDXL (width 80)"),
    ("sd15", {"lora": "sdxl_lora_kohya"}, {}, "models.lora", "incompatible_model",
     "is a LoRA for SDXL (lora_unet_input_blocks_"),
    ("flux", {"lora": "lora"}, {}, "models.lora", "incompatible_model", "is a LoRA for SD 1.5 or SDXL (unet."),
    ("sdxl", {"lora": "flux_lora"}, {}, "models.lora", "incompatible_model", "is a LoRA for Flux.1 (transformer."),
    ("sdxl", {"ip_adapter": "ip_adapter", "image_encoder": "image_encoder"}, {"style_reference": True},
     "models.ip_adapter", "incompatible_model", "is an IP-Adapter made for another model family (cross-attention width "
                                                "32), but the base model is SDXL (width 80); use an IP-Adapter made "
                                                "for SDXL"),
    ("sd15", {"ip_adapter": "sdxl_ip_adapter"}, {"style_reference": True}, "models.ip_adapter", "incompatible_model",
     "(width 32); use an IP-Adapter made for SD 1.5"),
    ("flux", {}, {"prompt_keys": ["a"], "characters": [{"name": "A", "mask_ids": [1]}], "frames": None},
     "characters", "unsupported_by_family", "joint"),
    ("flux", {}, {"tier": "draft"}, "tier", "unsupported_by_family", "FLUX.1-schnell"),
    ("flux", {}, {"width": 72}, "width", "unsupported_by_family", "multiples of 16, got 72; use 64 or 80"),
]


@pytest.mark.parametrize("family, models, fields, field, code, words", CASES)
def test_a_model_of_another_family_is_refused_at_submit(tiny_models: dict[str, str], storage: Storage, family: str,
                                                        models: dict[str, Any], fields: dict[str, Any], field: str,
                                                        code: str, words: str) -> None:
    job = body(tiny_models, storage, family, **{k: tiny_models.get(v, v) if isinstance(v, str) else v
                                                for k, v in models.items()})
    job.update({k: v for k, v in fields.items() if k not in ("frames", "style_reference")})
    if "style_reference" in fields:  # a reference image, so that the IP-Adapter is used (and checked)
        from engine_testlib import noise_image

        data = noise_image(1)
        storage.put_blob(sha := hashlib.sha256(data).hexdigest(), data)
        job["style_reference"] = sha
    if "characters" in fields:  # a mask for them, or the characters check stops first
        from engine_testlib import png_bytes, two_character_mask

        data = png_bytes(two_character_mask())
        storage.put_blob(sha := hashlib.sha256(data).hexdigest(), data)
        job["frames"] = [{**f, "mask": sha} for f in job["frames"]]
    if code == "unsupported_by_family" and field == "width":
        code = "bad_request"
    fault = refused(storage, job)
    assert (fault.status, fault.code, fault.field) == (400, code, field), fault.message
    assert words in fault.message, fault.message
    assert fault.message.startswith(field + ": "), fault.message
    given = models.get(field.removeprefix("models."))
    if code == "incompatible_model" and given in tiny_models:  # the file or folder is named, as given
        assert f"'{tiny_models[given]}'" in fault.message or Path(tiny_models[given]).name in fault.message, \
            fault.message


def test_a_map_the_family_has_no_mode_for_names_the_frame(tiny_models: dict[str, str], storage: Storage) -> None:
    from test_maps import normal_array, png

    job = body(tiny_models, storage, "flux")
    data = png(normal_array())
    storage.put_blob(sha := hashlib.sha256(data).hexdigest(), data)
    job["frames"][1]["normal"] = sha
    fault = refused(storage, job)
    assert (fault.code, fault.field) == ("unsupported_by_family", "frames[1].normal")
    assert "Flux.1's union ControlNet has no normal mode (it takes depth, pose, lineart)" in fault.message
    job["frames"][1]["normal_weight"] = 0.0  # a map at weight 0 is not run: the job is fine
    assert submit_job(JobRequest.model_validate(job), storage, lambda d: "cpu", SpeedOptions()).key.family == "flux"


def test_a_single_file_whose_family_cannot_be_told(tiny_models: dict[str, str], storage: Storage,
                                                   tmp_path: Path) -> None:
    job = body(tiny_models, storage, "sd15", base=unknown_file(tmp_path))
    fault = refused(storage, job)
    assert (fault.code, fault.field) == ("unrecognized_model", "models.base")
    assert "cannot tell which model family the single file" in fault.message and "mystery.safetensors" in fault.message
    assert "Give the model as a diffusers folder" in fault.message


def test_a_single_file_without_a_config_names_the_command(tiny_models: dict[str, str], storage: Storage,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No models.base_config and the reference repository not in the (empty) Hugging Face cache: a 400 saying
    how to get a config, never a download."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    for family, base, repo in (("sd15", "sd15_file", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
                               ("sdxl", "sdxl_file", "stabilityai/stable-diffusion-xl-base-1.0")):
        fault = refused(storage, body(tiny_models, storage, family, base=tiny_models[base]))
        assert (fault.code, fault.field) == ("model_unavailable", "models.base"), fault.message
        assert f"`hf download {repo} --include '*.json' '*.txt'`" in fault.message
        assert "set models.base_config to a diffusers folder of the same family" in fault.message


def test_a_union_file_needs_its_config_beside_it(tiny_models: dict[str, str], storage: Storage,
                                                 tmp_path: Path) -> None:
    import shutil

    alone = tmp_path / "promax.safetensors"
    shutil.copy(Path(tiny_models["union_sdxl"]) / "diffusion_pytorch_model.safetensors", alone)
    fault = refused(storage, body(tiny_models, storage, "sdxl", controlnet_union=str(alone)))
    assert (fault.code, fault.field) == ("model_unavailable", "models.controlnet_union")
    assert "needs the config.json of its repository in the same folder" in fault.message


def test_the_benchmarks_full_size_sdxl_is_sdxls_size() -> None:
    """benchmarks/bench_families.py's random-weight SDXL UNet has SDXL base 1.0's 2,567,463,684 parameters; the
    union net the 1.26 billion of xinsir's (built on the meta device: no memory, no weights)."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetUnionModel, UNet2DConditionModel

    from engine.testing.tiny_families import SDXL_FULL_UNET, UNION_MODES_SDXL

    with init_empty_weights():
        unet = UNet2DConditionModel(**SDXL_FULL_UNET, sample_size=128, out_channels=4,
                                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
        union = ControlNetUnionModel(**SDXL_FULL_UNET, conditioning_embedding_out_channels=(16, 32, 96, 256),
                                     num_control_type=UNION_MODES_SDXL)
    assert (sum(p.numel() for p in unet.parameters()), sum(p.numel() for p in union.parameters())) == (
        2_567_463_684, 1_256_614_800)
