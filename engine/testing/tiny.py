"""Random-weight models in the SD 1.5 layout, built offline.

``python -m engine make-tiny-models DIR`` writes ``DIR/sd15`` (a diffusers pipeline
folder), ``DIR/controlnet-depth``, ``DIR/controlnet-pose``, the issue-23 map nets
``DIR/controlnet-normal``, ``DIR/controlnet-lineart``, ``DIR/controlnet-seg``, ``DIR/lora.safetensors``,
``DIR/ip-adapter.safetensors`` (and ``ip-adapter-plus.safetensors``, the resampler layout) with their
image encoder ``DIR/image-encoder``, and the draft tier's ``DIR/lcm-lora.safetensors`` (kohya layout, as
latent-consistency/lcm-lora-sdv1-5) and ``DIR/tiny-vae`` (an AutoencoderTiny). They are saved with
``save_pretrained`` (safetensors) and loaded by the engine through exactly the code
that loads real models, so tests and the offline demo exercise the real path.
The tokenizer is built from a byte-level vocabulary written here: nothing comes
from the Hub.

Presets: ``tiny`` (diffusers' test sizes, ~1 s for 4 frames at 64x64 on a CPU),
``mid`` (a few million parameters, for the CPU overhead benchmark) and ``sd15``
(full SD 1.5 UNet/ControlNet/VAE/CLIP-L sizes, random weights, for GPU benchmarks).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    unet_channels: tuple[int, ...]
    layers_per_block: int
    attention_head_dim: int
    norm_num_groups: int
    cross_attention_dim: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    text_vocab_size: int
    vae_channels: tuple[int, ...]
    vae_layers_per_block: int
    vae_norm_num_groups: int
    conditioning_channels: tuple[int, ...]
    sample_size: int


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        unet_channels=(32, 64), layers_per_block=1, attention_head_dim=8, norm_num_groups=32,
        cross_attention_dim=32, text_layers=2, text_heads=4, text_intermediate=37,
        # Three VAE blocks (latents at 1/4 of the image, SD has 1/8): at 64x64 the UNet
        # attends over 16x16 tokens instead of 32x32, about 6x faster on a CPU.
        text_vocab_size=1000, vae_channels=(32, 32, 64), vae_layers_per_block=1,
        vae_norm_num_groups=32, conditioning_channels=(16, 32, 32), sample_size=16,
    ),
    "mid": Preset(
        unet_channels=(64, 128, 256, 256), layers_per_block=1, attention_head_dim=8,
        norm_num_groups=32, cross_attention_dim=256, text_layers=2, text_heads=4,
        text_intermediate=512, text_vocab_size=1000, vae_channels=(32, 64, 128, 128),
        vae_layers_per_block=1, vae_norm_num_groups=32, conditioning_channels=(16, 32, 96, 256),
        sample_size=32,
    ),
    "sd15": Preset(
        unet_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
        norm_num_groups=32, cross_attention_dim=768, text_layers=12, text_heads=12,
        text_intermediate=3072, text_vocab_size=49408, vae_channels=(128, 256, 512, 512),
        vae_layers_per_block=2, vae_norm_num_groups=32, conditioning_channels=(16, 32, 96, 256),
        sample_size=64,
    ),
}


def _block_types(n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """SD 1.5 layout: cross-attention in every block but the deepest."""
    if n == 2:
        return ("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D")
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    return down, up


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table: one printable symbol per byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = [], 0
    for b in range(256):
        if b in printable:
            codes.append(chr(b))
        else:
            codes.append(chr(256 + extra))
            extra += 1
    return codes


def write_tokenizer(folder: Path) -> None:
    """Write a CLIP BPE tokenizer whose vocabulary is the 256 byte symbols (no merges)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    # transformers 5 names these `vocab`/`merges` (4.x: `vocab_file`/`merges_file`).
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77,
    )
    tokenizer.save_pretrained(folder)


def build_components(preset: Preset, seed: int = 0) -> dict[str, object]:
    """Build random-weight SD 1.5-layout components; runs on the calling thread."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    down, up = _block_types(len(preset.unet_channels))
    unet_kwargs = dict(
        block_out_channels=preset.unet_channels, layers_per_block=preset.layers_per_block,
        in_channels=4, down_block_types=down, cross_attention_dim=preset.cross_attention_dim,
        attention_head_dim=preset.attention_head_dim, norm_num_groups=preset.norm_num_groups,
    )
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **unet_kwargs, out_channels=4, up_block_types=up, sample_size=preset.sample_size
    )
    controlnets = {name: random_controlnet(preset, seed + offset)
                   for offset, name in enumerate(("controlnet-depth", "controlnet-pose"), start=1)}
    torch.manual_seed(seed + 3)
    n_vae = len(preset.vae_channels)
    vae = AutoencoderKL(
        block_out_channels=preset.vae_channels, in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_vae, up_block_types=("UpDecoderBlock2D",) * n_vae,
        latent_channels=4, layers_per_block=preset.vae_layers_per_block,
        norm_num_groups=preset.vae_norm_num_groups, sample_size=preset.sample_size * 8,
    )
    torch.manual_seed(seed + 4)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        # Ids of <|startoftext|>/<|endoftext|> in the byte vocabulary of write_tokenizer.
        bos_token_id=512, eos_token_id=513,
        hidden_size=preset.cross_attention_dim, intermediate_size=preset.text_intermediate,
        num_attention_heads=preset.text_heads, num_hidden_layers=preset.text_layers,
        vocab_size=preset.text_vocab_size, max_position_embeddings=77, layer_norm_eps=1e-5,
    ))
    # SD 1.5's own scheduler settings, so a tiny pipeline schedules like a real one.
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
    )
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler, **controlnets}


def random_controlnet(preset: Preset, seed: int) -> object:
    """A ControlNet of the preset's UNet shape with random weights from ``seed``; calling thread."""
    import torch
    from diffusers import ControlNetModel

    down, _ = _block_types(len(preset.unet_channels))
    torch.manual_seed(seed)
    net = ControlNetModel(
        block_out_channels=preset.unet_channels, layers_per_block=preset.layers_per_block, in_channels=4,
        down_block_types=down, cross_attention_dim=preset.cross_attention_dim,
        attention_head_dim=preset.attention_head_dim, norm_num_groups=preset.norm_num_groups,
        conditioning_embedding_out_channels=preset.conditioning_channels,
    )
    # A new ControlNet starts with zero convolutions, so it would not change the
    # image at all; random ones make the control maps visible in the frames.
    for module in (net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out):
        for param in module.parameters():
            torch.nn.init.normal_(param, std=0.2)
    return net


# Issue 23's map nets and their seeds' offsets: past every offset build_components and the writers
# below use (1..10), so the depth/pose nets and the other models stay what they always were.
MAP_NETS = {"normal": ("controlnet-normal", 11), "lineart": ("controlnet-lineart", 12),
            "seg": ("controlnet-seg", 13)}


def write_map_controlnets(preset: Preset, out: Path, seed: int = 0) -> dict[str, Path]:
    """``out/controlnet-normal``, ``-lineart``, ``-seg``: tiny random ControlNets like the depth and pose
    ones, each from its own seed, built and saved one at a time (the sd15 preset's are 1.4 GB each)."""
    paths: dict[str, Path] = {}
    for kind, (folder, offset) in MAP_NETS.items():
        net = random_controlnet(preset, seed + offset)
        net.save_pretrained(out / folder, safe_serialization=True)  # type: ignore[attr-defined]
        paths[kind] = out / folder
        del net
    return paths


def write_lora(pipe: object, path: Path, seed: int = 0, rank: int = 4) -> None:
    """A random UNet LoRA in the diffusers/kohya-compatible safetensors layout."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = pipe.unet  # type: ignore[attr-defined]
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed + 5)
    # peft starts lora_B at zero (a no-op LoRA); random B makes the LoRA change frames.
    layers = {k: torch.randn(v.shape, generator=generator) * 0.5 for k, v in get_peft_model_state_dict(unet).items()}
    unet.delete_adapters("default")
    StableDiffusionPipeline.save_lora_weights(path.parent, unet_lora_layers=layers, weight_name=path.name,
                                              safe_serialization=True)


def write_draft_lora(unet: object, path: Path, seed: int = 0, rank: int = 4) -> None:
    """A random distillation LoRA in the kohya layout of latent-consistency/lcm-lora-sdv1-5.

    Keys ``lora_unet_<module path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` over
    the UNet's attention projections, as the real file has them (it adds the convolutions too);
    diffusers converts them when loading, exactly as for the real one. Small weights: a LoRA that
    nudges the UNet, as a distillation LoRA does, rather than one that replaces its output.
    """
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",  # type: ignore[attr-defined]
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]), adapter_name="draft")
    state = get_peft_model_state_dict(unet, adapter_name="draft")  # 'down_blocks.0...attn1.to_q.lora_A.weight'
    unet.delete_adapters("draft")  # type: ignore[attr-defined]
    generator = torch.Generator().manual_seed(seed + 9)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in sorted(state.items()):
        module, part = key.rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        direction = "lora_down" if part.startswith("A") else "lora_up"
        tensors[f"{name}.{direction}.weight"] = (torch.randn(value.shape, generator=generator) * 0.1).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))


def write_tiny_vae(preset: Preset, folder: Path, seed: int = 0) -> None:
    """A random AutoencoderTiny (the TAESD layout) whose latents match the preset's VAE (4 channels, same scale)."""
    import torch
    from diffusers import AutoencoderTiny

    blocks = len(preset.vae_channels)  # one down/up-sampling fewer than blocks, as the VAE
    torch.manual_seed(seed + 10)
    vae = AutoencoderTiny(encoder_block_out_channels=(16,) * blocks, decoder_block_out_channels=(16,) * blocks,
                          num_encoder_blocks=(1,) * blocks, num_decoder_blocks=(1,) * blocks, latent_channels=4)
    vae.save_pretrained(folder, safe_serialization=True)


def write_ip_adapter(unet: object, path: Path, encoder_dir: Path, seed: int = 0, embed_dim: int = 32) -> None:
    """A random IP-Adapter (the h94 ``ip-adapter_sd15`` layout) and a tiny CLIP vision encoder for it.

    Keys: ``image_proj.proj``/``image_proj.norm`` (4 image tokens) and ``ip_adapter.{i}.to_k_ip/to_v_ip``
    with ``i`` = 1, 3, 5, ... over the UNet's cross-attention layers in processor order, as diffusers reads them.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed + 6)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, projection_dim=embed_dim, num_hidden_layers=2,
        num_attention_heads=4, image_size=32, patch_size=4, num_channels=3,
    ))
    encoder.save_pretrained(encoder_dir, safe_serialization=True)
    cross = unet.config.cross_attention_dim  # type: ignore[attr-defined]
    generator = torch.Generator().manual_seed(seed + 7)
    tensors = {
        "image_proj.proj.weight": torch.randn(4 * cross, embed_dim, generator=generator) * 0.5,
        "image_proj.proj.bias": torch.zeros(4 * cross),
        "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross),
    }
    channels = unet.config.block_out_channels  # type: ignore[attr-defined]
    key_id = 1
    for name in unet.attn_processors:  # type: ignore[attr-defined]
        if not name.endswith("attn2.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        for part in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{key_id}.{part}.weight"] = torch.randn(hidden, cross, generator=generator) * 0.3
        key_id += 2
    save_file(tensors, str(path))
    # The "plus" layout (h94 ip-adapter-plus_sd15, the add-on's default): a perceiver resampler
    # over the encoder's hidden states, 16 image tokens, in the original checkpoint's key names.
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    torch.manual_seed(seed + 8)
    resampler = IPAdapterPlusImageProjection(embed_dims=32, output_dims=cross, hidden_dims=64, depth=4,
                                             dim_head=64, heads=1, num_queries=16).state_dict()
    plus = {k: v for k, v in tensors.items() if k.startswith("ip_adapter.")}
    renames = [("ln0", "0.norm1"), ("ln1", "0.norm2"), ("attn.to_q", "0.to_q"), ("attn.to_out.0", "0.to_out"),
               ("ff.0", "1.0"), ("ff.1.net.0.proj", "1.1"), ("ff.1.net.2", "1.3")]
    for key, value in resampler.items():
        if ".attn.to_k." in key or ".attn.to_v." in key:
            continue
        for new, old in renames:
            key = key.replace(f".{new}.", f".{old}.")
        plus["image_proj." + key] = value
    for i in range(4):
        plus[f"image_proj.layers.{i}.0.to_kv.weight"] = torch.cat(
            [resampler[f"layers.{i}.attn.to_k.weight"], resampler[f"layers.{i}.attn.to_v.weight"]])
    save_file(plus, str(path.with_name("ip-adapter-plus.safetensors")))


def make_tiny_models(out_dir: str | Path, preset: str = "tiny", seed: int = 0) -> dict[str, Path]:
    """Write the pipeline and both ControlNets under ``out_dir``; returns their folders."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    components = build_components(PRESETS[preset], seed=seed)
    write_tokenizer(out / "_tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(out / "_tokenizer")
    pipe = StableDiffusionPipeline(
        vae=components["vae"], text_encoder=components["text_encoder"], tokenizer=tokenizer,
        unet=components["unet"], scheduler=components["scheduler"], safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    paths = {"base": out / "sd15", "depth": out / "controlnet-depth", "pose": out / "controlnet-pose",
             "lora": out / "lora.safetensors", "ip_adapter": out / "ip-adapter.safetensors",
             "ip_adapter_plus": out / "ip-adapter-plus.safetensors", "image_encoder": out / "image-encoder",
             "draft_lora": out / "lcm-lora.safetensors", "tiny_vae": out / "tiny-vae"}
    pipe.save_pretrained(paths["base"], safe_serialization=True)
    write_lora(pipe, paths["lora"], seed=seed)
    write_ip_adapter(pipe.unet, paths["ip_adapter"], paths["image_encoder"], seed=seed)
    write_draft_lora(pipe.unet, paths["draft_lora"], seed=seed)
    write_tiny_vae(PRESETS[preset], paths["tiny_vae"], seed=seed)
    components["controlnet-depth"].save_pretrained(paths["depth"], safe_serialization=True)
    components["controlnet-pose"].save_pretrained(paths["pose"], safe_serialization=True)
    paths.update(write_map_controlnets(PRESETS[preset], out, seed=seed))
    from .upscalers import write_upscalers

    paths.update(write_upscalers(out, preset="full" if preset == "sd15" else "tiny", seed=seed))
    logger.info("Wrote %s random-weight models to %s", preset, out)
    return paths
