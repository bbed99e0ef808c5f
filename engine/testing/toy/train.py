"""Train the toy-world models from the generated dataset: VAE, then UNet with text, then the ControlNets.

    .venv-engine/bin/python -m engine.testing.toy.train --data DIR --out engine/testing/toy/weights \
        [--seed 0] [--vae-steps N] [--unet-steps N] [--depth-steps N] [--pose-steps N]

DIR is what ``toyworld/generate.py`` wrote (``train.jsonl`` and the shot folders). The result is
the SD 1.5 folder layout, loaded by the engine through the same code as real models:
``OUT/sd15`` (vae, unet, text_encoder, tokenizer, scheduler, model_index.json),
``OUT/controlnet-depth``, ``OUT/controlnet-pose``, and ``OUT/training.json`` (sizes, steps, wall
times, loss curves: the model card's figures). Weights are saved in float16 to stay small.

Stages (each seeded, each reading only the previous stages' output):
1. VAE: reconstruction (L1 + MSE) with a small KL term; its latent scaling factor is measured.
2. UNet + CLIP text encoder: epsilon prediction on SD's noise schedule, 10 % empty captions
   (classifier-free guidance), min-SNR weighting, EMA weights saved.
3. Depth ControlNet (from the UNet's encoder, zero convolutions), with the UNet fine-tuned at a
   tenth of the rate and 20 % of batches without control, so the UNet alone still draws scenes.
4. Pose ControlNet on frames with people, the depth net applied beside it as the engine does.

Runs on the calling thread; torch threads as set by the caller (OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import vocab
from .data import SIZE, batches, control_maps, images, load_dataset, thing_weights

log = logging.getLogger(__name__)

# The first VAE block runs at full resolution: 16 channels keep it cheap on a CPU.
VAE = {"block_out_channels": (16, 32, 64), "layers_per_block": 1, "norm_num_groups": 16, "latent_channels": 4}
# Cross-attention at 16x16 and 8x8 latents (4 and 8 pixels a token): regional prompts need masks that fine.
UNET = {"block_out_channels": (32, 64, 128), "layers_per_block": 1, "attention_head_dim": 8,
        "norm_num_groups": 16, "cross_attention_dim": 64}
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2}
CONDITIONING_CHANNELS = (16, 32, 64)  # three blocks: the control map is downsampled 4x, as the VAE does
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


# -- models -----------------------------------------------------------------------------------

def build_vae() -> Any:
    from diffusers import AutoencoderKL

    n = len(VAE["block_out_channels"])
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, sample_size=SIZE, **VAE)


def build_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=SIZE // 4, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), **UNET)


def build_text_encoder(vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, max_position_embeddings=77, layer_norm_eps=1e-5,
                                        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, **TEXT))


def build_tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    vocab.write_tokenizer_files(folder)
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                              model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


class Ema:
    """An exponential moving average of a module's weights (the weights that get saved)."""

    def __init__(self, module: Any, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    def update(self, module: Any, step: int) -> None:
        import torch

        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for s, p in zip(self.shadow.parameters(), module.parameters()):
                s.lerp_(p.detach(), 1.0 - decay)


def _loop(name: str, steps: int, step_fn: Callable[[int], float], curve: list[list[float]],
          every: int = 25) -> float:
    """Run ``step_fn`` ``steps`` times; the loss curve (mean of every ``every`` steps) goes to ``curve``."""
    started = time.perf_counter()
    window: list[float] = []
    for step in range(steps):
        window.append(step_fn(step))
        if len(window) == every or step == steps - 1:
            curve.append([step + 1, round(float(np.mean(window)), 5)])
            window = []
            if len(curve) % 8 == 0 or step == steps - 1:
                log.info("%s: step %d/%d loss %.4f (%.0fs)", name, step + 1, steps, curve[-1][1],
                         time.perf_counter() - started)
    return time.perf_counter() - started


def _optimizer(params: list[Any], lr: float, steps: int, warmup: int = 100) -> tuple[Any, Any]:
    import torch

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    return opt, sched


# -- stages -----------------------------------------------------------------------------------

def train_vae(arrays: dict[str, Any], steps: int, batch: int, seed: int, report: dict[str, Any],
              every: int = 25) -> Any:
    """Stage 1: the autoencoder. Returns it (eval mode) with ``config.scaling_factor`` measured."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = build_vae().train()
    opt, sched = _optimizer(list(vae.parameters()), 1e-3, steps)
    stream = batches(len(arrays["rgb"]), batch, rng)
    curve: list[list[float]] = []

    def step_fn(_: int) -> float:
        x = images(arrays, next(stream))
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = (recon - x).abs().mean() + ((recon - x) ** 2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return float(loss.detach())

    wall = _loop("vae", steps, step_fn, curve, every)
    vae.eval()
    with torch.no_grad():
        idx = np.arange(min(512, len(arrays["rgb"])))
        latents = torch.cat([vae.encode(images(arrays, idx[i:i + 64])).latent_dist.mean for i in range(0, len(idx), 64)])
        recon = torch.cat([vae.decode(latents[i:i + 64]).sample for i in range(0, len(idx), 64)])
        psnr = float(10 * torch.log10(4.0 / ((recon.clamp(-1, 1) - images(arrays, idx)) ** 2).mean()))
    vae.register_to_config(scaling_factor=round(float(1.0 / latents.std()), 5))
    report["vae"] = {"steps": steps, "batch": batch, "wall_s": round(wall, 1), "loss": curve,
                     "psnr_db": round(psnr, 2), "scaling_factor": vae.config.scaling_factor}
    return vae


def encode_latents(vae: Any, arrays: dict[str, Any]) -> Any:
    """The scaled latent means of every frame, once (the UNet stages never run the encoder)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(arrays["rgb"]), 128):
            idx = np.arange(i, min(i + 128, len(arrays["rgb"])))
            out.append(vae.encode(images(arrays, idx)).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(out)


def tokenize(tokenizer: Any, captions: list[str]) -> Any:
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


class Diffusion:
    """SD's training objective: noise at a random timestep, predict the noise, min-SNR weighted."""

    def __init__(self, seed: int, high_noise: float = 0.0) -> None:
        import torch
        from diffusers import DDPMScheduler

        self.high_noise = high_noise  # this share of samples draws t from the noisier 70 % of the schedule
        self.scheduler = DDPMScheduler(**SCHEDULE)
        self.snr = self.scheduler.alphas_cumprod / (1 - self.scheduler.alphas_cumprod)
        self.generator = torch.Generator().manual_seed(seed)

    def noised(self, latents: Any) -> tuple[Any, Any, Any, Any]:
        import torch

        noise = torch.randn(latents.shape, generator=self.generator)
        total = self.scheduler.config.num_train_timesteps
        t = torch.randint(0, total, (latents.shape[0],), generator=self.generator)
        if self.high_noise > 0:
            # Layout is decided at high noise: a control net that must place silhouettes learns there.
            high = torch.randint(int(0.3 * total), total, (latents.shape[0],), generator=self.generator)
            t = torch.where(torch.rand(latents.shape[0], generator=self.generator) < self.high_noise, high, t)
        weight = torch.clamp(self.snr[t], max=5.0) / self.snr[t]  # min-SNR, gamma 5
        return self.scheduler.add_noise(latents, noise, t), noise, t, weight

    @staticmethod
    def loss(pred: Any, noise: Any, weight: Any, spatial: Any | None = None) -> Any:
        """Min-SNR weighted squared error. ``spatial`` (B, 1, h, w) weighs latent pixels, divided by its
        mean over each frame: the things' share of the loss grows, the loss's scale does not."""
        error = (pred - noise) ** 2
        if spatial is not None:
            error = error * spatial / spatial.mean(dim=(1, 2, 3), keepdim=True)
        return (error.mean(dim=(1, 2, 3)) * weight).mean()


def train_unet(latents: Any, ids: Any, empty: Any, steps: int, batch: int, seed: int, vocab_size: int,
               report: dict[str, Any], every: int = 25) -> tuple[Any, Any]:
    """Stage 2: UNet and text encoder together; returns their EMA copies."""
    import torch

    torch.manual_seed(seed + 1)
    rng = np.random.default_rng(seed + 1)
    unet, text = build_unet().train(), build_text_encoder(vocab_size).train()
    ema_unet, ema_text = Ema(unet, 0.999), Ema(text, 0.999)
    opt, sched = _optimizer(list(unet.parameters()) + list(text.parameters()), 6e-4, steps)
    diffusion = Diffusion(seed + 1)
    stream = batches(len(latents), batch, rng)
    curve: list[list[float]] = []

    def step_fn(step: int) -> float:
        idx = next(stream)
        tokens = ids[idx].clone()
        tokens[torch.from_numpy(rng.random(len(idx)) < 0.1)] = empty  # unconditional for guidance
        noisy, noise, t, weight = diffusion.noised(latents[idx])
        pred = unet(noisy, t, encoder_hidden_states=text(tokens)[0]).sample
        loss = diffusion.loss(pred, noise, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text.parameters()), 1.0)
        opt.step()
        sched.step()
        ema_unet.update(unet, step)
        ema_text.update(text, step)
        return float(loss.detach())

    wall = _loop("unet+text", steps, step_fn, curve, every)
    report["unet"] = {"steps": steps, "batch": batch, "wall_s": round(wall, 1), "loss": curve, "ema": 0.999}
    return ema_unet.shadow, ema_text.shadow


def train_controlnet(name: str, unet: Any, text: Any, latents: Any, ids: Any, empty: Any, maps: Callable[[np.ndarray], Any],
                     steps: int, batch: int, seed: int, report: dict[str, Any], *, subset: np.ndarray | None = None,
                     tune_unet: bool = False, beside: tuple[Any, Callable[[np.ndarray], Any]] | None = None,
                     lr: float = 5e-4, zero_lr: float | None = None, high_noise: float = 0.0,
                     start: Any | None = None, unet_rate: float = 0.1, joint: bool = False,
                     spatial: Callable[[np.ndarray], Any] | None = None) -> Any:
    """Stage 3/4: a ControlNet from the UNet's encoder. ``tune_unet``: the UNet learns beside it at a
    tenth of the rate, and 20 % of batches run without control. ``beside``: a trained net (and its
    maps) applied too, frozen, as the engine applies several nets at once. ``zero_lr``: the rate of
    the zero convolutions and the map's embedding (they start at zero and must grow before the net
    does anything). ``start``: a trained net to go on training instead of a fresh copy of the
    encoder; ``unet_rate``: the tuned UNet's rate as a share of ``lr``. ``joint`` (with ``tune_unet``):
    the text encoder learns too, and the UNet and text encoder end as their moving averages (the
    raw weights of a UNet tuned beside a net draw grain where FLOW denoises lightly: the unadopted
    experiment in docs/benchmarks.md). ``spatial``: a loss weight per latent pixel for a batch
    (``thing_weights``). Returns the EMA net."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if start is None:
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS).train()
    else:
        net = start.train()
        net.requires_grad_(True)
    ema = Ema(net, 0.998)
    unet.requires_grad_(tune_unet).train(tune_unet)
    joint = joint and tune_unet
    text.requires_grad_(joint).train(joint)
    averaged = [(unet, Ema(unet, 0.999)), (text, Ema(text, 0.999))] if joint else []
    fresh = [p for n, p in net.named_parameters() if n.startswith(("controlnet_down_blocks", "controlnet_mid_block",
                                                                   "controlnet_cond_embedding"))]
    ids_fresh = {id(p) for p in fresh}
    groups = [{"params": [p for p in net.parameters() if id(p) not in ids_fresh], "lr": lr},
              {"params": fresh, "lr": zero_lr or lr}]
    if tune_unet:
        groups.append({"params": list(unet.parameters()), "lr": lr * unet_rate})
    if joint:
        groups.append({"params": list(text.parameters()), "lr": lr * unet_rate})
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    diffusion = Diffusion(seed, high_noise)
    stream = batches(len(latents), batch, rng, subset)
    curve: list[list[float]] = []

    def step_fn(step: int) -> float:
        idx = next(stream)
        tokens = ids[idx].clone()
        tokens[torch.from_numpy(rng.random(len(idx)) < 0.1)] = empty
        noisy, noise, t, weight = diffusion.noised(latents[idx])
        with torch.set_grad_enabled(joint):
            hidden = text(tokens)[0]
        off = tune_unet and rng.random() < 0.2
        down, mid = None, None
        if not off:
            down, mid = net(noisy, t, encoder_hidden_states=hidden, controlnet_cond=maps(idx), return_dict=False)
            if beside is not None:
                other, other_maps = beside
                with torch.no_grad():
                    d2, m2 = other(noisy, t, encoder_hidden_states=hidden, controlnet_cond=other_maps(idx),
                                   return_dict=False)
                down, mid = [a + b for a, b in zip(down, d2)], mid + m2
        pred = unet(noisy, t, encoder_hidden_states=hidden, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        loss = diffusion.loss(pred, noise, weight, None if spatial is None else spatial(idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.update(net, step)
        for module, average in averaged:
            average.update(module, step)
        return float(loss.detach())

    wall = _loop(name, steps, step_fn, curve)
    for module, average in averaged:  # the averages are what is saved and what later stages see
        module.load_state_dict(average.shadow.state_dict())
    unet.requires_grad_(False).eval()
    text.requires_grad_(False).eval()
    report[name] = {"steps": steps, "batch": batch, "wall_s": round(wall, 1), "loss": curve, "lr": lr,
                    "zero_lr": zero_lr or lr, "high_noise": high_noise, "unet_tuned": tune_unet,
                    "unet_rate": unet_rate if tune_unet else 0.0, "continued": start is not None, "joint": joint,
                    "frames": int(len(latents) if subset is None else len(subset))}
    return ema.shadow


def save(out: Path, vae: Any, unet: Any, text: Any, tokenizer: Any, nets: dict[str, Any]) -> None:
    """The SD 1.5 folder layout, float16 safetensors (copies: the modules trained here stay float32).

    Called after each stage, so the pipeline so far can be tried while later stages train.
    """
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    vae, unet, text = (copy.deepcopy(m) for m in (vae, unet, text))
    nets = {name: copy.deepcopy(net) for name, net in nets.items()}
    scheduler = PNDMScheduler(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, **SCHEDULE)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(out / "sd15", safe_serialization=True)
    for name, net in nets.items():
        net.to(torch.float16).save_pretrained(out / name, safe_serialization=True)
    drop_local_paths(out)


def drop_local_paths(out: Path) -> None:
    """The saved configs without ``_name_or_path``: diffusers writes the folder a module was loaded
    from there, a path on the training machine that means nothing in the repository."""
    for config in out.glob("**/config.json"):
        values = json.loads(config.read_text())
        if values.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def resume(folder: Path, out: Path, report: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """Stages 1-2 from a finished run: its VAE, UNet, text encoder and tokenizer (its report's stages kept)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    base = folder.resolve() / "sd15"
    vae = AutoencoderKL.from_pretrained(base / "vae", torch_dtype=torch.float32).eval()
    unet = UNet2DConditionModel.from_pretrained(base / "unet", torch_dtype=torch.float32).eval()
    text = CLIPTextModel.from_pretrained(base / "text_encoder", torch_dtype=torch.float32).eval()
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    earlier = json.loads((folder / "training.json").read_text())
    report["resumed_from"] = {k: v for k, v in earlier.items() if k != "architecture"}
    report["vae"], report["unet"] = earlier["vae"], earlier["unet"]
    if out != folder.resolve():
        save(out, vae, unet, text, tokenizer, {})
    return vae, unet, text, tokenizer


def _load_net(folder: Path) -> Any:
    import torch
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(folder.resolve(), torch_dtype=torch.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the toy-world models (VAE, UNet+text, ControlNets).")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16, help="UNet batch")
    parser.add_argument("--small-batch", type=int, default=16, help="VAE and ControlNet batch")
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--unet-steps", type=int, default=2500)
    parser.add_argument("--depth-steps", type=int, default=1000)
    parser.add_argument("--pose-steps", type=int, default=300)
    parser.add_argument("--resume", type=Path, default=None,
                        help="start at stage 3 from this folder's sd15 (a finished run): the ControlNets again")
    parser.add_argument("--cn-lr", type=float, default=5e-4)
    parser.add_argument("--zero-lr", type=float, default=None, help="zero convolutions' rate (default: --cn-lr)")
    parser.add_argument("--high-noise", type=float, default=0.0,
                        help="share of ControlNet samples drawn from the noisier 70%% of the schedule")
    parser.add_argument("--continue-nets", action="store_true",
                        help="with --resume: go on training that folder's ControlNets instead of starting them anew")
    parser.add_argument("--keep-unet", action="store_true",
                        help="with --resume: save the resumed UNet, not the one tuned beside the nets (the "
                             "unadopted experiment in docs/benchmarks.md: the tuned UNet drew grain under FLOW, "
                             "the nets trained beside it serve the resumed one)")
    parser.add_argument("--unet-rate", type=float, default=0.1,
                        help="the UNet's rate beside the depth net, as a share of --cn-lr")
    parser.add_argument("--thing-weight", type=float, default=0.0,
                        help="stages 3-4: weigh the loss where the captioned things are up to 1 + this (their "
                             "masks at the latents' resolution; 0: every pixel alike)")
    parser.add_argument("--joint", action="store_true",
                        help="stage 3 trains the text encoder too and keeps moving averages of the UNet and text "
                             "encoder (saved instead of their raw weights)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    if (args.continue_nets or args.keep_unet) and args.resume is None:
        parser.error("--continue-nets goes on from the nets of --resume FOLDER: give --resume")
    started_nets: dict[str, Any] = {}
    kept_unet: Any = None
    started = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"seed": args.seed, "size": SIZE, "torch_threads": torch.get_num_threads(),
                              "architecture": {"vae": VAE, "unet": UNET, "text": TEXT,
                                               "conditioning_channels": CONDITIONING_CHANNELS}}
    arrays = load_dataset(args.data)
    report["data"] = {"frames": len(arrays["rgb"]), "with_people": int(arrays["has_pose"].sum())}
    log.info("data: %d frames (%d with people)", len(arrays["rgb"]), int(arrays["has_pose"].sum()))
    if args.resume is not None:
        vae, unet, text, tokenizer = resume(args.resume, out, report)
        ids, empty = tokenize(tokenizer, arrays["captions"]), tokenize(tokenizer, [""])[0]
        latents = encode_latents(vae, arrays)
        kept_unet = copy.deepcopy(unet) if args.keep_unet else None
        report["unet_kept"] = args.keep_unet
        if args.continue_nets:
            started_nets = {name: _load_net(args.resume / name) for name in ("controlnet-depth", "controlnet-pose")}
    else:
        tokenizer = build_tokenizer(out / "sd15" / "tokenizer")
        ids, empty = tokenize(tokenizer, arrays["captions"]), tokenize(tokenizer, [""])[0]
        # 1. VAE.
        vae = train_vae(arrays, args.vae_steps, args.small_batch, args.seed, report)
        latents = encode_latents(vae, arrays)
        # 2. UNet + text encoder.
        unet, text = train_unet(latents, ids, empty, args.unet_steps, args.batch, args.seed, len(tokenizer), report)
        save(out, vae, unet, text, tokenizer, {})
    # 3. Depth ControlNet (UNet fine-tuned beside it).
    spatial = (lambda idx: thing_weights(arrays, idx, args.thing_weight)) if args.thing_weight > 0 else None
    depth = train_controlnet("controlnet-depth", unet, text, latents, ids, empty,
                             lambda idx: control_maps(arrays, idx, "depth"), args.depth_steps, args.small_batch,
                             args.seed + 2, report, tune_unet=True, lr=args.cn_lr, zero_lr=args.zero_lr,
                             high_noise=args.high_noise, start=started_nets.get("controlnet-depth"),
                             unet_rate=args.unet_rate, joint=args.joint, spatial=spatial)
    report["controlnet-depth"]["thing_weight"] = args.thing_weight
    save(out, vae, unet if kept_unet is None else kept_unet, text, tokenizer, {"controlnet-depth": depth})
    # 4. Pose ControlNet, the depth net beside it.
    people = np.flatnonzero(arrays["has_pose"])
    pose = train_controlnet("controlnet-pose", unet, text, latents, ids, empty,
                            lambda idx: control_maps(arrays, idx, "pose"), args.pose_steps, args.small_batch,
                            args.seed + 3, report, subset=people,
                            beside=(depth, lambda idx: control_maps(arrays, idx, "depth")), lr=args.cn_lr,
                            zero_lr=args.zero_lr, high_noise=args.high_noise,
                            start=started_nets.get("controlnet-pose"), spatial=spatial)
    report["controlnet-pose"]["thing_weight"] = args.thing_weight
    save(out, vae, unet if kept_unet is None else kept_unet, text, tokenizer, {"controlnet-depth": depth, "controlnet-pose": pose})
    report["params"] = {k: sum(p.numel() for p in m.parameters()) for k, m in
                        (("vae", vae), ("unet", unet), ("text_encoder", text), ("controlnet-depth", depth),
                         ("controlnet-pose", pose))}
    report["wall_s"] = round(time.perf_counter() - started, 1)
    (out / "training.json").write_text(json.dumps(report, indent=1))
    log.info("done in %.0fs: %s", report["wall_s"], out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
