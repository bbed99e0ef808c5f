"""Regional prompts and masked IP-Adapter input at the attention level (engine/IDENTITY.md).

The text embedding a frame runs with is ``[shot prompt + style | character 1 | ... ]``,
one 77-token block per visible character with a description. ``RegionalAttnProcessor``
replaces every cross-attention processor of the UNet (and of the ControlNets) while a
batch runs: a pixel owned by character k attends to the shot block and block k only, a
pixel owned by nobody to the shot block only, so descriptions cannot bleed between
characters. Ownership comes from the exact id masks, area-resized to each attention
resolution. The negative prompt is repeated once per block, which is exactly the plain
negative prompt (attention over copies of the same keys gives the same result).

IP-Adapter image tokens (one slot per character with references, plus the film's
style slot) are attended separately, as diffusers' ``IPAdapterAttnProcessor2_0`` does,
and added with each slot's scale times its soft mask (the share of the latent cell the
character covers), per frame of the batch: a character's references act only inside its
mask, the style slot everywhere but only in the style blocks (InstantStyle).
Processors are installed for a call and restored after it, so jobs without characters
run the stock processors and their frames do not change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Chosen by measurement (engine/IDENTITY.md, benchmarks/bench_identity.py); part of the cache key.
# Bounded self-attention measured no better on the tiny models and costs more: off (IDENTITY.md).
BOUNDED_SELF_ATTENTION = False


@dataclass
class IpSlot:
    """One IP-Adapter image slot: scale per layer and an optional per-frame mask index."""

    scale: float
    owner: int | None  # 1-based owner id in RegionState.owners; None: the whole frame
    style_only: bool = False


@dataclass
class RegionState:
    """What the processors read during one pipeline call (worker thread only)."""

    owners: np.ndarray  # n x H x W uint8: per frame of the batch, 0 = nobody, k = text block k / owner k
    blocks: int  # number of 77-token text blocks after the shot block
    block_len: int  # tokens per block
    latent_hw: tuple[int, int]
    slots: list[IpSlot] = field(default_factory=list)
    # Bounded self-attention (see the module docstring); off = cross-attention masks only.
    bounded_self: bool = field(default_factory=lambda: BOUNDED_SELF_ATTENTION)
    _cache: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def grid(self, tokens: int) -> tuple[int, int]:
        """The (h, w) of an attention layer with ``tokens`` query tokens."""
        h, w = self.latent_hw
        for _ in range(8):
            if h * w == tokens:
                return h, w
            h, w = (h + 1) // 2, (w + 1) // 2
        raise ValueError(f"no attention resolution with {tokens} tokens for latents {self.latent_hw}")

    def fractions(self, tokens: int, device: Any, dtype: Any) -> Any:
        """n x (K+1) x tokens: the share of each latent cell owned by nobody / owner k."""
        key = (tokens, "fractions")
        if key not in self._cache:
            import torch
            import torch.nn.functional as F

            h, w = self.grid(tokens)
            count = int(self.owners.max()) + 1 if self.owners.size else 1
            count = max(count, self.blocks + 1, max((s.owner or 0 for s in self.slots), default=0) + 1)
            owners = torch.from_numpy(self.owners.astype(np.int64))
            onehot = F.one_hot(owners, count).permute(0, 3, 1, 2).float()
            self._cache[key] = F.interpolate(onehot, size=(h, w), mode="area").flatten(2)
        return self._on(key, device, dtype)

    def _on(self, key: tuple[int, str], device: Any, dtype: Any = None) -> Any:
        """The cached CPU tensor ``key`` on ``device`` (copied once per call of the pipeline, not per layer)."""
        moved = (*key, str(device), str(dtype))
        if moved not in self._cache:
            tensor = self._cache[key]
            self._cache[moved] = tensor.to(device=device, dtype=dtype) if dtype is not None else tensor.to(device)
        return self._cache[moved]

    def allowed(self, tokens: int, batch: int, device: Any) -> Any:
        """batch x 1 x tokens x keys bool: which text tokens each query pixel may attend to."""
        key = (tokens, f"allowed{batch}")
        if key not in self._cache:
            import torch

            fractions = self.fractions(tokens, "cpu", torch.float32)
            # A cell belongs to whoever covers most of it (ties: the background).
            owner = fractions[:, : self.blocks + 1].argmax(dim=1)  # n x tokens
            block_of_key = torch.arange((self.blocks + 1) * self.block_len) // self.block_len  # keys
            allowed = (block_of_key[None, None, :] == 0) | (block_of_key[None, None, :] == owner[..., None])
            repeat = batch // allowed.shape[0]
            self._cache[key] = allowed.repeat(repeat, 1, 1).unsqueeze(1)
        return self._on(key, device)

    def owner(self, tokens: int) -> Any:
        """n x tokens: who owns each latent cell (most of its area; ties: the background)."""
        import torch

        return self.fractions(tokens, "cpu", torch.float32).argmax(dim=1)

    def self_allowed(self, tokens: int, batch: int, device: Any) -> Any:
        """batch x 1 x tokens x tokens bool: a cell attends to its own owner's cells and the background."""
        key = (tokens, f"self{batch}")
        if key not in self._cache:
            owner = self.owner(tokens)
            allowed = (owner[:, None, :] == owner[:, :, None]) | (owner[:, None, :] == 0)
            self._cache[key] = allowed.repeat(batch // allowed.shape[0], 1, 1).unsqueeze(1)
        return self._on(key, device)


# Self-attention is bounded only up to this many query tokens (a 64x64 latent, SD 1.5 at 512 px):
# the mask is tokens^2 booleans per frame, 16.8 MB here; larger layers run unbounded.
MAX_BOUNDED_TOKENS = 4096


class RegionalAttnProcessor:
    """Cross-attention with per-pixel text blocks and masked IP-Adapter slots (module docstring)."""

    def __init__(self, state: RegionState, ip_layers: Any = None, style_layer: bool = False) -> None:
        self.state = state
        self.ip_layers = ip_layers  # the diffusers IPAdapterAttnProcessor holding to_k_ip / to_v_ip, or None
        self.style_layer = style_layer

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None,
                 temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        import torch.nn.functional as F

        state = self.state
        is_cross = encoder_hidden_states is not None
        ip_states = None
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states, ip_states = encoder_hidden_states[0], encoder_hidden_states[1]
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if not is_cross:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: Any) -> Any:
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        def merge(x: Any) -> Any:
            return x.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)

        query = heads(query)
        # 1. Text: each pixel sees the shot block and its owner's block only. Self-attention:
        #    each cell sees its own character's cells and the background, never another character's.
        if is_cross:
            mask = state.allowed(tokens, batch, query.device) if state.blocks else None
        else:
            bounded = state.bounded_self and tokens <= MAX_BOUNDED_TOKENS and state.owners.any()
            mask = state.self_allowed(tokens, batch, query.device) if bounded else None
        out = merge(F.scaled_dot_product_attention(query, heads(key), heads(value), attn_mask=mask))
        # 2. IP-Adapter slots, each scaled and masked to its owner's region.
        if ip_states is not None and self.ip_layers is not None and state.slots:
            images = ip_states[0]  # batch x slots x tokens x dim
            fractions = None
            for index, slot in enumerate(state.slots):
                scale = slot.scale if (self.style_layer or not slot.style_only) else 0.0
                if scale == 0.0:
                    continue
                ip_key = heads(self.ip_layers.to_k_ip[0](images[:, index]))
                ip_value = heads(self.ip_layers.to_v_ip[0](images[:, index]))
                ip_out = merge(F.scaled_dot_product_attention(query, ip_key, ip_value))
                if slot.owner is not None:
                    if fractions is None:
                        fractions = state.fractions(tokens, query.device, query.dtype)
                        fractions = fractions.repeat(batch // fractions.shape[0], 1, 1)
                    ip_out = ip_out * fractions[:, slot.owner, :, None]
                out = out + scale * ip_out
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def style_layer_names(unet: Any) -> set[str]:
    """InstantStyle's style layers: the second transformer of the first up block with attention
    (SDXL: up_blocks.0.attentions.1, SD 1.5: up_blocks.1.attentions.1)."""
    for index, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        if attentions:
            prefix = f"up_blocks.{index}.attentions.{min(1, len(attentions) - 1)}."
            return {name for name in unet.attn_processors if name.startswith(prefix)}
    return set()


@contextmanager
def installed(unet: Any, nets: list[Any], state: RegionState, ip: Any = None) -> Iterator[None]:
    """Swap in regional processors (and the IP-Adapter's image projection) for one call; restore after.

    ``ip`` is the loaded IP-Adapter (``engine.characters.ip_adapter.IpAdapter``) or None.
    """
    saved = [(module, module.attn_processors) for module in [unet, *nets]]
    styled = style_layer_names(unet)
    try:
        for module, processors in saved:
            with_ip = module is unet and ip is not None
            module.set_attn_processor({
                name: RegionalAttnProcessor(state, ip.layers.get(name) if with_ip else None, name in styled)
                if name.endswith("attn2.processor") or (state.bounded_self and name.endswith("attn1.processor"))
                else proc
                for name, proc in processors.items()
            })
        if ip is not None:
            ip.attach(unet)
        yield
    finally:
        if ip is not None:
            ip.detach(unet)
        for module, processors in saved:
            module.set_attn_processor(processors)


def regional_embeds(pipe: Any, prompt: str, negative: str, blocks: list[str], n: int,
                    device: Any) -> dict[str, Any]:
    """The text arguments for ``n`` frames: the shot block, then one 77-token block per text in ``blocks``.

    SD 1.5 gives (prompt_embeds, negative_prompt_embeds). SDXL's blocks are its two encoders' outputs side
    by side (2048 wide), the same layout, and it also takes pooled embeddings, which condition the whole
    frame through the time embedding, not per region: they stay the shot prompt's (and the negative's).
    """
    import torch

    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    shot = pipe.encode_prompt(prompt=prompt, device=device, num_images_per_prompt=1,
                              do_classifier_free_guidance=True, negative_prompt=negative)
    parts = [shot[0]] + [pipe.encode_prompt(prompt=text, device=device, num_images_per_prompt=1,
                                            do_classifier_free_guidance=False)[0] for text in blocks]
    out = {"prompt_embeds": torch.cat(parts, dim=1).repeat(n, 1, 1),
           "negative_prompt_embeds": torch.cat([shot[1]] * len(parts), dim=1).repeat(n, 1, 1)}
    if sdxl:
        out["pooled_prompt_embeds"] = shot[2].repeat(n, 1)
        out["negative_pooled_prompt_embeds"] = shot[3].repeat(n, 1)
    return out
