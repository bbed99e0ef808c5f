"""Random-weight SDXL and Flux.1 models with their union ControlNets, built offline (issue 24).

Sizes follow diffusers' own tests (``tests/pipelines/controlnet/test_controlnet_union_sdxl.py``,
``tests/pipelines/controlnet_flux/test_controlnet_flux.py``): a two-block SDXL UNet with both text
encoders (``cross_attention_dim`` 80 = 32 + 48, pooled 32) and a one-double, one-single block Flux
transformer with a CLIP and a T5 encoder. Three changes: SDXL's second text encoder is 48 wide (see
``CLIP_TEXT_2``), each VAE has three blocks (latents at 1/4 of
the image, as the tiny SD 1.5 has), so a 64x64 frame denoises over a 16x16 latent; and the tokenizers
are byte vocabularies written here. Everything is saved with ``save_pretrained`` (safetensors) and
loaded by the engine through exactly the code that loads real models; nothing comes from the Hub.

``make_family_models(DIR)`` (after ``make_tiny_models(DIR)``, whose SD 1.5 it writes as a single file too)
writes ``DIR/sdxl``, ``DIR/controlnet-union-sdxl``, ``DIR/controlnet-depth-sdxl``, ``DIR/flux``,
``DIR/controlnet-union-flux``; the LoRAs ``DIR/sdxl-lora-kohya.safetensors`` (kohya's SDXL layout),
``DIR/sdxl-lora.safetensors`` (diffusers layout), ``DIR/sdxl-lcm-lora.safetensors`` (the draft tier's),
``DIR/flux-lora.safetensors``; ``DIR/ip-adapter-sdxl/`` (IP-Adapter and image encoder); and the single
files ``DIR/sd15.safetensors`` and ``DIR/sdxl.safetensors`` in the original key layout
(``engine/testing/single_file.py``). Calling thread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The tiny SDXL UNet (diffusers' test config) and the union ControlNet of the same shape.
SDXL_UNET: dict[str, Any] = dict(
    block_out_channels=(32, 64), layers_per_block=2, in_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), attention_head_dim=(2, 4),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
    cross_attention_dim=80,  # 32 + 48: the two text encoders' widths side by side
)
CLIP_TEXT: dict[str, Any] = dict(
    bos_token_id=512, eos_token_id=513, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-5,
    num_attention_heads=4, num_hidden_layers=5, vocab_size=1000, hidden_act="gelu", projection_dim=32,
    max_position_embeddings=77,
)
# SDXL's second encoder (OpenCLIP bigG, 1280 wide) is wider than its first (CLIP-L, 768): 48 here against
# 32, where diffusers' tests use 32 for both. diffusers tells the two apart in a single file by that width.
CLIP_TEXT_2: dict[str, Any] = {**CLIP_TEXT, "hidden_size": 48}
# Three blocks: one downsampling fewer than SD's four, two more than diffusers' test VAE.
TINY_VAE: dict[str, Any] = dict(
    block_out_channels=(32, 32, 64), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    norm_num_groups=32, sample_size=64,
)
FLUX_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    guidance_embeds=True,
)
# Flux packs 2x2 latent cells into one token: 4 latent channels make the transformer's 16.
FLUX_VAE: dict[str, Any] = dict(
    block_out_channels=(16, 16, 32), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    norm_num_groups=16, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
    shift_factor=0.0609, scaling_factor=1.5035,
)
T5_TEXT: dict[str, Any] = dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, vocab_size=260,
                               decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
# xinsir's union has 6 trained modes (8 in promax); InstantX's Flux union 7 (canny..lq) of 10 slots.
UNION_MODES_SDXL = 8
UNION_MODES_FLUX = 10


def _tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    from .tiny import write_tokenizer

    write_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder)


def _visible(net: Any, modules: list[Any]) -> Any:
    """A new ControlNet starts with zero convolutions (it changes nothing); random ones make maps visible."""
    import torch

    for module in modules:
        for param in module.parameters():
            torch.nn.init.normal_(param, std=0.2)
    return net


def sdxl_pipeline(folder: Path, seed: int = 0) -> Any:
    """A random SDXL text-to-image pipeline of the tiny sizes; returns it (not saved)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed + 20)
    unet = UNet2DConditionModel(**SDXL_UNET, sample_size=16, out_channels=4,
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    torch.manual_seed(seed + 21)
    vae = AutoencoderKL(**TINY_VAE)
    torch.manual_seed(seed + 22)
    text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_TEXT))
    torch.manual_seed(seed + 23)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_TEXT_2))
    tokenizer = _tokenizer(folder / "_tokenizer")
    # SDXL's own scheduler settings, so a tiny pipeline schedules like a real one.
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)


def sdxl_union(seed: int = 0) -> Any:
    """A random xinsir-style ControlNetUnionModel for the tiny SDXL UNet."""
    import torch
    from diffusers import ControlNetUnionModel

    torch.manual_seed(seed + 24)
    net = ControlNetUnionModel(**SDXL_UNET, conditioning_embedding_out_channels=(16, 32, 32),
                               num_control_type=UNION_MODES_SDXL, num_trans_channel=32, num_trans_head=2,
                               num_trans_layer=1, num_proj_channel=32)
    # The projection from the control-type transformer to the spatial features is also zero at first: random,
    # so a map's control mode changes the frame (5.7 levels of 255 between modes 1 and 0 on one depth map).
    torch.nn.init.normal_(net.spatial_ch_projs.weight, std=0.5)
    return _visible(net, [net.controlnet_down_blocks, net.controlnet_mid_block,
                          net.controlnet_cond_embedding.conv_out])


def flux_pipeline(folder: Path, seed: int = 0) -> Any:
    """A random Flux.1 text-to-image pipeline of the tiny sizes; returns it (not saved)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from .tiny_video import write_t5_tokenizer

    torch.manual_seed(seed + 30)
    transformer = FluxTransformer2DModel(**FLUX_TRANSFORMER)
    torch.manual_seed(seed + 31)
    vae = AutoencoderKL(**FLUX_VAE)
    torch.manual_seed(seed + 32)
    text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_TEXT))
    torch.manual_seed(seed + 33)
    text_encoder_2 = T5EncoderModel(T5Config(**T5_TEXT))
    write_t5_tokenizer(folder / "_t5")
    from transformers import AutoTokenizer

    tokenizer_2 = AutoTokenizer.from_pretrained(folder / "_t5")
    # FLUX.1-dev's scheduler: resolution-dependent shift.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                        tokenizer=_tokenizer(folder / "_tokenizer"), text_encoder_2=text_encoder_2,
                        tokenizer_2=tokenizer_2, transformer=transformer)


def flux_union(seed: int = 0) -> Any:
    """A random InstantX-style union FluxControlNetModel (``num_mode`` set) for the tiny transformer."""
    import torch
    from diffusers import FluxControlNetModel

    torch.manual_seed(seed + 34)
    net = FluxControlNetModel(**FLUX_TRANSFORMER, num_mode=UNION_MODES_FLUX)
    return _visible(net, [net.controlnet_blocks, net.controlnet_single_blocks, net.controlnet_x_embedder])


def sdxl_controlnet(seed: int = 0) -> Any:
    """A random per-map SDXL ControlNetModel (the layout of diffusers/controlnet-depth-sdxl-1.0)."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed + 25)
    net = ControlNetModel(**SDXL_UNET, conditioning_embedding_out_channels=(16, 32, 32))
    return _visible(net, [net.controlnet_down_blocks, net.controlnet_mid_block,
                          net.controlnet_cond_embedding.conv_out])


def random_lora(module: Any, seed: int, targets: list[str], rank: int = 4, std: float = 0.3) -> dict[str, Any]:
    """A random LoRA for ``module`` in peft's naming (``<module>.lora_A.weight``), made on a copy: peft leaves
    ``base_layer`` wrappers behind in a module it adapted, which would rename the module's own weights.

    peft starts lora_B at zero (a LoRA that changes nothing): here both are random, so the LoRA shows.
    """
    import copy

    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    module = copy.deepcopy(module)
    module.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets),
                       adapter_name="tiny")
    state = get_peft_model_state_dict(module, adapter_name="tiny")
    generator = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=generator) * std).contiguous() for k, v in sorted(state.items())}


def kohya_sgm(layers: dict[str, Any], layers_per_block: int, rank: int = 4) -> dict[str, Any]:
    """peft UNet LoRA layers in kohya's SDXL layout: ``lora_unet_<sgm module, _-joined>.lora_down/up.weight`` and
    ``.alpha``, with the original (sgm) block names kohya's SDXL trainer writes (``input_blocks_4_1_...``)."""
    import torch

    from .single_file import unet_keys

    out: dict[str, Any] = {}
    for key, value in layers.items():
        module, part = key.rsplit(".lora_", 1)
        sgm = next(iter(unet_keys({module + ".weight": None}, layers_per_block)))
        name = "lora_unet_" + sgm.removeprefix("model.diffusion_model.").removesuffix(".weight").replace(".", "_")
        out[f"{name}.{'lora_down' if part.startswith('A') else 'lora_up'}.weight"] = value
        out[f"{name}.alpha"] = torch.tensor(float(rank))
    return out


ATTENTION = ["to_k", "to_q", "to_v", "to_out.0"]


def write_sdxl_extras(sdxl: Any, out: Path, seed: int = 0) -> dict[str, Path]:
    """The SDXL LoRAs (kohya and diffusers layouts), draft LoRA, IP-Adapter, per-map ControlNet and the
    single files of both SD families, under ``out``; returns their paths."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors.torch import save_file

    from .single_file import write_single_file
    from .tiny import write_ip_adapter

    paths = {"sdxl_lora_kohya": out / "sdxl-lora-kohya.safetensors", "sdxl_lora": out / "sdxl-lora.safetensors",
             "sdxl_draft_lora": out / "sdxl-lcm-lora.safetensors", "sdxl_depth": out / "controlnet-depth-sdxl",
             "sdxl_ip_adapter": out / "ip-adapter-sdxl" / "ip-adapter.safetensors",
             "sdxl_file": out / "sdxl.safetensors", "sd15_file": out / "sd15.safetensors"}
    lpb = sdxl.unet.config.layers_per_block
    save_file(kohya_sgm(random_lora(sdxl.unet, seed + 40, ATTENTION), lpb), str(paths["sdxl_lora_kohya"]))
    StableDiffusionXLPipeline.save_lora_weights(out, unet_lora_layers=random_lora(sdxl.unet, seed + 41, ATTENTION),
                                                weight_name=paths["sdxl_lora"].name, safe_serialization=True)
    # The draft LoRA nudges the UNet as a distillation LoRA does, in the layout of latent-consistency/lcm-lora-sdxl.
    save_file(kohya_sgm(random_lora(sdxl.unet, seed + 42, ATTENTION, std=0.1), lpb), str(paths["sdxl_draft_lora"]))
    sdxl_controlnet(seed).save_pretrained(paths["sdxl_depth"], safe_serialization=True)
    paths["sdxl_ip_adapter"].parent.mkdir(parents=True, exist_ok=True)
    write_ip_adapter(sdxl.unet, paths["sdxl_ip_adapter"], paths["sdxl_ip_adapter"].parent / "image-encoder",
                     seed=seed + 43)
    write_single_file(sdxl, paths["sdxl_file"])
    sd15 = StableDiffusionPipeline.from_pretrained(out / "sd15", safety_checker=None, requires_safety_checker=False)
    write_single_file(sd15, paths["sd15_file"])
    return paths


def write_flux_lora(flux: Any, path: Path, seed: int = 0) -> None:
    """A random Flux transformer LoRA in the diffusers layout (``transformer.<module>.lora_A.weight``)."""
    from diffusers import FluxPipeline

    layers = random_lora(flux.transformer, seed + 44, ["to_q", "to_k", "to_v", "to_out.0"])
    FluxPipeline.save_lora_weights(path.parent, transformer_lora_layers=layers, weight_name=path.name,
                                   safe_serialization=True)


def make_family_models(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the SDXL and Flux pipelines and their union ControlNets under ``out_dir``; returns the paths."""
    import shutil

    out = Path(out_dir).expanduser().resolve()
    paths = {"sdxl": out / "sdxl", "union_sdxl": out / "controlnet-union-sdxl", "flux": out / "flux",
             "union_flux": out / "controlnet-union-flux"}
    sdxl = sdxl_pipeline(out, seed)
    sdxl.save_pretrained(paths["sdxl"], safe_serialization=True)
    sdxl_union(seed).save_pretrained(paths["union_sdxl"], safe_serialization=True)
    paths.update(write_sdxl_extras(sdxl, out, seed))
    flux = flux_pipeline(out, seed)
    flux.save_pretrained(paths["flux"], safe_serialization=True)
    flux_union(seed).save_pretrained(paths["union_flux"], safe_serialization=True)
    paths["flux_lora"] = out / "flux-lora.safetensors"
    write_flux_lora(flux, paths["flux_lora"], seed)
    shutil.rmtree(out / "_t5", ignore_errors=True)
    logger.info("Wrote tiny SDXL and Flux models to %s", out)
    return paths


# Full size (the benchmark, benchmarks/bench_families.py): SDXL base 1.0's UNet and VAE, and xinsir's union
# ControlNet (controlnet-union-sdxl-1.0 promax's config), random weights. The text encoders have SDXL's widths
# (768 and 1280, pooled 1280) but two layers each: a prompt is encoded once per job, not per frame.
SDXL_FULL_UNET: dict[str, Any] = dict(
    block_out_channels=(320, 640, 1280), layers_per_block=2, in_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), attention_head_dim=(5, 10, 20),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    transformer_layers_per_block=(1, 2, 10), projection_class_embeddings_input_dim=2816, cross_attention_dim=2048,
)


def write_sdxl_full(out: Path, seed: int = 0, dtype: str = "float16") -> dict[str, Path]:
    """``out/sdxl-full`` and ``out/controlnet-union-sdxl-full``: full-size random SDXL + union net (in ``dtype``)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetUnionModel,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    paths = {"sdxl_full": out / "sdxl-full", "union_sdxl_full": out / "controlnet-union-sdxl-full"}
    torch.manual_seed(seed + 50)
    unet = UNet2DConditionModel(**SDXL_FULL_UNET, sample_size=128, out_channels=4,
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4,
                        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024, scaling_factor=0.13025)
    text = dict(CLIP_TEXT, num_hidden_layers=2, intermediate_size=3072)
    encoder = CLIPTextModel(CLIPTextConfig(**{**text, "hidden_size": 768, "num_attention_heads": 12}))
    encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**{**text, "hidden_size": 1280, "num_attention_heads": 20,
                                                              "projection_dim": 1280}))
    tokenizer = _tokenizer(out / "_tokenizer")
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=scheduler, add_watermarker=False)
    pipe.to(getattr(torch, dtype)).save_pretrained(paths["sdxl_full"], safe_serialization=True)
    del pipe, unet
    torch.manual_seed(seed + 51)
    net = ControlNetUnionModel(**SDXL_FULL_UNET, conditioning_embedding_out_channels=(16, 32, 96, 256),
                               num_control_type=UNION_MODES_SDXL)
    torch.nn.init.normal_(net.spatial_ch_projs.weight, std=0.02)
    net.to(getattr(torch, dtype)).save_pretrained(paths["union_sdxl_full"], safe_serialization=True)
    return paths
