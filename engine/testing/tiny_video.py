"""Random-weight video models built offline: a Wan VACE pipeline and an AnimateDiff motion adapter.

Sizes follow diffusers' own tests (``tests/pipelines/wan/test_wan_vace.py``,
``tests/pipelines/animatediff``), and the folders are written with ``save_pretrained``
(safetensors) so the engine loads them through the same code as real models. The T5
tokenizer is a byte-level word-level vocabulary written here; the text encoder a tiny
UMT5 config: nothing comes from the Hub.

Presets: ``tiny`` (tests, well under a second per 17-frame 32x32 clip on a CPU) and
``wan-1.3b`` (the 1.3B transformer and Wan VAE at full size with random weights, for
the GPU throughput protocol in docs/benchmarks.md; the text encoder stays small because a
prompt is encoded once per job, not per frame).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

WAN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                            out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=3,
                            cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
                            vace_layers=[0, 2], vace_in_channels=96),
        "vae": dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                    temperal_downsample=[False, True, True]),
        "text": dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4),
    },
    "wan-1.3b": {
        # Wan2.1-VACE-1.3B's transformer config; VACE blocks on every other layer.
        "transformer": dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                            out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                            vace_layers=list(range(0, 30, 2)), vace_in_channels=96),
        "vae": dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                    temperal_downsample=[False, True, True]),
        "text": dict(d_model=4096, d_kv=64, d_ff=1024, num_layers=1, num_heads=8),
    },
}


def write_t5_tokenizer(folder: Path) -> Any:
    """A T5-style tokenizer (pad 0, eos 1, unk 2) over the 256 bytes, written to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for byte in range(256):
        vocab[chr(byte) if 32 < byte < 127 else f"<0x{byte:02X}>"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    # T5 appends </s> to every prompt; Wan's embedding length counts it.
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=512)
    tokenizer.save_pretrained(folder)
    return tokenizer


def make_wan_vace(out: Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight ``WanVACEPipeline`` folder; returns it."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanVACEPipeline,
        WanVACETransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    if preset not in WAN_PRESETS:
        raise ValueError(f"Wan preset must be one of {sorted(WAN_PRESETS)}, got {preset!r}")
    sizes = WAN_PRESETS[preset]
    folder = out / ("wan-vace" if preset == "tiny" else f"wan-vace-{preset}")
    tokenizer = write_t5_tokenizer(out / "_t5_tokenizer")
    torch.manual_seed(seed)
    transformer = WanVACETransformer3DModel(**sizes["transformer"])
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(**sizes["vae"])
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, **sizes["text"],
    ))
    # The scheduler Wan VACE ships with: UniPC on flow sigmas, shift 3.0 (480p; 5.0 suits 720p).
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    pipe = WanVACEPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                           transformer=transformer)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def make_motion_adapter(out: Path, seed: int = 0) -> Path:
    """A random ``MotionAdapter`` matching the tiny SD 1.5 UNet of engine/testing/tiny.py (blocks 32/64, 1 layer)."""
    import torch
    from diffusers import MotionAdapter

    from .tiny import PRESETS

    preset = PRESETS["tiny"]
    torch.manual_seed(seed + 7)
    adapter = MotionAdapter(
        block_out_channels=preset.unet_channels, motion_layers_per_block=preset.layers_per_block,
        motion_norm_num_groups=preset.norm_num_groups, motion_num_attention_heads=4,
        motion_max_seq_length=64,
    )
    folder = out / "motion-adapter"
    adapter.save_pretrained(folder, safe_serialization=True)
    return folder


def make_tiny_video_models(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"wan_vace": make_wan_vace(out, "tiny", seed), "motion_adapter": make_motion_adapter(out, seed)}
    logger.info("Wrote tiny video models to %s", out)
    return paths
