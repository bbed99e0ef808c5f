"""A diffusers SD 1.5 / SDXL pipeline written as one ``.safetensors`` file in the original key layout.

Civitai checkpoints come as single files in the layout of the original training code (CompVis LDM for
SD 1.5, Stability's sgm for SDXL): ``model.diffusion_model.input_blocks.*`` for the UNet,
``first_stage_model.*`` for the VAE, ``cond_stage_model.transformer.*`` (SD 1.5) or
``conditioner.embedders.0.transformer.*`` and ``conditioner.embedders.1.model.*`` (SDXL's OpenCLIP
bigG) for the text encoders. diffusers converts that layout to its own when loading
(``diffusers.loaders.single_file_utils``); this module is the inverse of those converters, written
for any block layout (the tiny models have two or three blocks, not four), so the tests load tiny
checkpoints through exactly the path a real Civitai file takes. Calling thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))


def _resnet(name: str) -> str:
    for new, old in _RESNET:
        name = name.replace(f".{new}.", f".{old}.")
    return name


def _block(where: str, parts: list[str]) -> str:
    """``down_blocks.b.resnets.j.<rest>`` -> ``<where>.0.<rest>`` (resnet names renamed), attentions ``.1``."""
    rest = ".".join(parts[4:]) + "."
    if parts[2] == "resnets":
        return f"{where}.0" + _resnet("." + rest)
    return f"{where}.1.{rest}"


def unet_keys(state: dict[str, Any], layers_per_block: int) -> dict[str, Any]:
    """A diffusers UNet state dict in the LDM/sgm layout (inverse of ``convert_ldm_unet_checkpoint``)."""
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    per = layers_per_block + 1
    out: dict[str, Any] = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        parts = module.split(".")
        if module in fixed:
            new = fixed[module]
        elif parts[0] == "down_blocks":
            b = int(parts[1])
            if parts[2] == "downsamplers":
                new = f"input_blocks.{1 + b * per + layers_per_block}.0.op"
            else:
                new = _block(f"input_blocks.{1 + b * per + int(parts[3])}", parts)
        elif parts[0] == "mid_block":
            index = 0 if parts[1] == "resnets" and parts[2] == "0" else 1 if parts[1] == "attentions" else 2
            rest = ".".join(parts[3:]) + "."
            new = f"middle_block.{index}." + (_resnet("." + rest)[1:] if parts[1] == "resnets" else rest)
        elif parts[0] == "up_blocks":
            b = int(parts[1])
            if parts[2] == "upsamplers":
                has_attention = any(k.startswith(f"up_blocks.{b}.attentions.") for k in state)
                new = f"output_blocks.{b * per + layers_per_block}.{2 if has_attention else 1}.conv"
            else:
                new = _block(f"output_blocks.{b * per + int(parts[3])}", parts)
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new.rstrip(".") + "." + leaf] = value
    return out


def vae_keys(state: dict[str, Any], blocks: int) -> dict[str, Any]:
    """A diffusers AutoencoderKL state dict in the LDM layout (inverse of ``convert_ldm_vae_checkpoint``)."""
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out: dict[str, Any] = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        for i in range(blocks):
            new = new.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            new = new.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            new = new.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{blocks - 1 - i}.block.")
            new = new.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{blocks - 1 - i}.upsample.")
        for j in (0, 1):
            new = new.replace(f"mid_block.resnets.{j}.", f"mid.block_{j + 1}.")
        if "mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for ours, theirs in attention.items():
                new = new.replace(f".{ours}.", f".{theirs}.")
            if value.ndim == 2:  # the original attention projections are 1x1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def open_clip_keys(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A transformers CLIPTextModelWithProjection in OpenCLIP's layout (inverse of ``convert_open_clip_checkpoint``)."""
    import torch

    out: dict[str, Any] = {}
    fixed = {"text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias"}
    layers = sorted({int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")})
    for key, value in state.items():
        if key in fixed:
            out[prefix + fixed[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
    for i in layers:
        ours, theirs = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{theirs}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{ours}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")])
            out[f"{theirs}attn.out_proj.{kind}"] = state[f"{ours}self_attn.out_proj.{kind}"]
            out[f"{theirs}ln_1.{kind}"] = state[f"{ours}layer_norm1.{kind}"]
            out[f"{theirs}ln_2.{kind}"] = state[f"{ours}layer_norm2.{kind}"]
            out[f"{theirs}mlp.c_fc.{kind}"] = state[f"{ours}mlp.fc1.{kind}"]
            out[f"{theirs}mlp.c_proj.{kind}"] = state[f"{ours}mlp.fc2.{kind}"]
    return out


def _clip(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A transformers CLIPTextModel under ``prefix`` with the ``text_model.`` its original layout has."""
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def write_single_file(pipe: Any, path: Path) -> None:
    """``pipe`` (StableDiffusionPipeline or StableDiffusionXLPipeline) as one original-layout safetensors file."""
    from safetensors.torch import save_file

    tensors = {**unet_keys(pipe.unet.state_dict(), pipe.unet.config.layers_per_block),
               **vae_keys(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels))}
    if getattr(pipe, "text_encoder_2", None) is not None:
        tensors.update(_clip(pipe.text_encoder.state_dict(), "conditioner.embedders.0.transformer."))
        tensors.update(open_clip_keys(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    else:
        tensors.update(_clip(pipe.text_encoder.state_dict(), "cond_stage_model.transformer."))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
