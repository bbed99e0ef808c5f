"""Where the change outside a character's mask comes from, and what removes it (engine/IDENTITY.md).

Same frame and engine as ``bench_identity.py`` (A: left band, B: right band; only A's description
changes between the two frames of a pair). Experiments, each printing inside A / inside B /
outside A (RGB 0..255) and the ratio, or the same at the latent level:

- ``trace``: the latents entering the UNet at every step and the latents the VAE decodes, recorded
  for both frames of a pair: the change inside A's cells and outside them (cells with no A at all,
  and cells two or more cells away from A), per step. Step 0 starts from the same noise, so its
  noise-prediction change is the spread of one UNet pass; later steps add what drifted through the
  shared latent. ``vae``: the first frame's final latents with only A's cells taken from the second
  frame, decoded: how far the VAE decoder alone spreads a change confined to A.
- ``frozen-norm``: the second frame of each pair reuses the first frame's GroupNorm statistics
  (UNet and ControlNet; then the VAE too), call by call: what is left comes from convolutions and
  attention only.
- ``anchor``: the latents outside every character are pinned to a background trajectory (the frame
  with the shot prompt only, same seed), by replacing the scheduler's sample and model output there
  at every step; one more UNet pass per step.
- ``geometry``: the chosen method at other step counts and frame sizes.
- ``style``: the style reference in the style layers only against all layers: how much of the
  reference's layout the frame takes (correlation of the frame's low-frequency change with the
  reference's own structure, against with the depth map's).

    .venv-engine/bin/python benchmarks/bench_identity_leak.py --models DIR [--only trace,anchor]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_identity import DESCRIPTIONS, Bench  # noqa: E402

B_DESC = "a tall man in a grey cloak"


class Recorder:
    """UNet inputs/outputs per call and the latents the VAE decodes, for one frame."""

    def __init__(self) -> None:
        self.samples: list[Any] = []
        self.outputs: list[Any] = []
        self.decoded: Any = None
        self.fractions: Any = None
        self.vae: Any = None

    def wrap(self, installed: Callable[..., Any]) -> Callable[..., Any]:
        @contextlib.contextmanager
        def context(unet: Any, nets: list[Any], state: Any, ip: Any = None) -> Iterator[None]:
            from diffusers import AutoencoderKL

            original, decode = unet.forward, AutoencoderKL.decode
            h, w = state.latent_hw
            self.fractions = state.fractions(h * w, "cpu", None).clone()

            def forward(sample: Any, *args: Any, **kwargs: Any) -> Any:
                out = original(sample, *args, **kwargs)
                self.samples.append(sample.detach().clone())
                self.outputs.append(out[0].detach().clone())
                return out

            def record_decode(vae: Any, z: Any, *args: Any, **kwargs: Any) -> Any:
                self.decoded, self.vae = z.detach().clone(), vae
                return decode(vae, z, *args, **kwargs)

            with installed(unet, nets, state, ip):
                unet.forward = forward
                AutoencoderKL.decode = record_decode
                try:
                    yield
                finally:
                    del unet.forward
                    AutoencoderKL.decode = decode
        return context


@contextlib.contextmanager
def frozen_group_norm(stats: list[Any], mode: str, include: Callable[[Any], bool]) -> Iterator[None]:
    """GroupNorm per-group mean/var: ``record`` them call by call, ``replay`` the recorded ones, or ``uncond``:
    take them from the first half of the batch (the negative prompt's half of classifier-free guidance, which
    no description reaches) for the whole batch."""
    import torch

    original = torch.nn.GroupNorm.forward
    calls = iter(stats)

    def forward(self: Any, x: Any) -> Any:
        if not include(self):
            return original(self, x)
        n, c = x.shape[:2]
        grouped = x.reshape(n, self.num_groups, -1)
        if mode == "replay":
            mean, var = next(calls)
        elif mode == "uncond" and n % 2 == 0:
            half = grouped[: n // 2]
            mean = half.mean(-1, keepdim=True).repeat(2, 1, 1)
            var = half.var(-1, unbiased=False, keepdim=True).repeat(2, 1, 1)
        else:
            mean, var = grouped.mean(-1, keepdim=True), grouped.var(-1, unbiased=False, keepdim=True)
            stats.append((mean, var))
        y = ((grouped - mean) / torch.sqrt(var + self.eps)).reshape(x.shape)
        shape = (1, c) + (1,) * (x.ndim - 2)
        return y * self.weight.reshape(shape) + self.bias.reshape(shape) if self.affine else y

    torch.nn.GroupNorm.forward = forward
    try:
        yield
    finally:
        torch.nn.GroupNorm.forward = original


@contextlib.contextmanager
def anchored(trajectory: list[tuple[Any, Any]] | None, record: list[tuple[Any, Any]] | None,
             keep: list[Any]) -> Iterator[None]:
    """Scheduler steps: record (model_output, sample) per step, or replace them outside the characters
    (weight 1 - share of the cell owned by a character, ``keep[0]``) with a recorded trajectory's."""
    from diffusers import UniPCMultistepScheduler

    original = UniPCMultistepScheduler.step
    index = iter(range(10_000))

    def step(self: Any, model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        i = next(index)
        if record is not None:
            record.append((model_output.clone(), sample.clone()))
        if trajectory is not None:
            inside = keep[0].to(sample.dtype)
            bg_out, bg_sample = trajectory[i]
            model_output = inside * model_output + (1 - inside) * bg_out
            sample = inside * sample + (1 - inside) * bg_sample
        return original(self, model_output, timestep, sample, *args, **kwargs)

    UniPCMultistepScheduler.step = step
    try:
        yield
    finally:
        UniPCMultistepScheduler.step = original


def chars_weight(installed: Callable[..., Any], keep: list[Any]) -> Callable[..., Any]:
    """The processor context, noting the share of each latent cell owned by a character in ``keep[0]``."""
    @contextlib.contextmanager
    def context(unet: Any, nets: list[Any], state: Any, ip: Any = None) -> Iterator[None]:
        h, w = state.latent_hw
        fractions = state.fractions(h * w, "cpu", None)
        keep[:] = [(1 - fractions[:, 0]).reshape(-1, 1, h, w)]
        with installed(unet, nets, state, ip):
            yield
    return context


def cell_masks(fractions: Any, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent cells fully inside A, with no A at all, and two or more cells away from A."""
    from scipy.ndimage import binary_dilation

    a = fractions[0, 1].reshape(h, w).numpy()
    inside, none = a >= 0.999, a <= 0.001
    far = ~binary_dilation(a > 0.001, iterations=2)
    return inside, none, far


def trace(bench: Bench, seeds: int) -> None:
    print("## trace: latent change inside A's cells / outside (no A) / far (>= 2 cells from A), per step")
    rows: dict[str, list[tuple[float, float, float]]] = {}
    vae_pairs, real_pairs = [], []
    for seed in range(seeds):
        for first, second in DESCRIPTIONS:
            one, two = Recorder(), Recorder()
            img1, _ = bench.run(100 + seed, first, B_DESC, "attention", wrap=one.wrap)
            img2, _ = bench.run(100 + seed, second, B_DESC, "attention", wrap=two.wrap)
            real_pairs.append((img1, img2))
            h, w = one.decoded.shape[-2:]
            inside, none, far = cell_masks(one.fractions, h, w)

            def split(d: Any, key: str, inside: Any = inside, none: Any = none, far: Any = far) -> None:
                d = d.abs().mean(dim=(0, 1)).numpy()
                rows.setdefault(key, []).append((d[inside].mean(), d[none].mean(), d[far].mean()))

            for s, (x1, x2) in enumerate(zip(one.samples, two.samples, strict=True)):
                if s:  # step 0: the same noise in both frames
                    split(x1 - x2, f"latent in, step {s}")
            # The conditional half of the noise prediction (the negative half is the same in both frames).
            for s in (0, len(one.outputs) - 1):
                split(one.outputs[s][1:] - two.outputs[s][1:], f"noise prediction, step {s}")
            split(one.decoded - two.decoded, "final latents")
            # The VAE alone: the first frame's latents with only A's cells from the second.
            import torch

            a = one.fractions[:, 1].reshape(1, 1, h, w).to(one.decoded.dtype)
            hybrid = a * two.decoded + (1 - a) * one.decoded
            with torch.no_grad():
                pix = [((one.vae.decode(z).sample[0].permute(1, 2, 0).float().numpy() / 2 + 0.5).clip(0, 1) * 255)
                       for z in (one.decoded, hybrid)]
            vae_pairs.append((pix[0], pix[1]))
    for key, values in rows.items():
        v = np.mean(values, axis=0)
        print(f"{key:28s} inside A {v[0]:7.4f}  no A {v[1]:7.4f}  far {v[2]:7.4f}  ratio in/no-A {v[0] / v[1]:6.2f}"
              f"  in/far {v[0] / v[2]:6.2f}", flush=True)
    bench.report("pixels, engine frames [attention]", real_pairs, [])
    bench.report("pixels, VAE only (A's latents swapped)", vae_pairs, [])


def norm_wrap(include: set[int], vae_too: bool, inner: Callable[..., Any]) -> Callable[..., Any]:
    """``inner``'s context, adding the GroupNorms of the UNet and ControlNets (and the VAE's) to ``include``."""
    import torch

    def wrap(installed: Callable[..., Any]) -> Callable[..., Any]:
        @contextlib.contextmanager
        def context(unet: Any, nets: list[Any], state: Any, ip: Any = None) -> Iterator[None]:
            from diffusers import AutoencoderKL

            roots = [unet, *nets]
            decode = AutoencoderKL.decode

            def marking(vae: Any, *args: Any, **kwargs: Any) -> Any:
                include.update(id(m) for m in vae.modules() if isinstance(m, torch.nn.GroupNorm))
                return decode(vae, *args, **kwargs)

            include.update(id(m) for root in roots for m in root.modules() if isinstance(m, torch.nn.GroupNorm))
            if vae_too:
                AutoencoderKL.decode = marking
            try:
                with inner(installed)(unet, nets, state, ip):
                    yield
            finally:
                AutoencoderKL.decode = decode
        return context
    return wrap


def frozen(bench: Bench, seeds: int) -> None:
    """One pass (step 0) and whole frames with the paths that reach outside A switched off one by one."""
    print("## frozen-norm / bounded self-attention: the second frame of a pair reuses the first's GroupNorm "
          "statistics; bounded: no cell outside A reads A's cells in self-attention")
    for label, method, norm, vae_too in (("as is", "attention", "", False),
                                         ("bounded self-attention", "attention+bounded-self", "", False),
                                         ("GroupNorm frozen (UNet+ControlNet)", "attention", "replay", False),
                                         ("GroupNorm frozen + bounded", "attention+bounded-self", "replay", False),
                                         ("GroupNorm frozen incl. VAE + bounded", "attention+bounded-self", "replay",
                                          True),
                                         ("GroupNorm stats of the negative half", "attention", "uncond", False)):
        pairs, first_pass, final = [], [], []
        for seed in range(seeds):
            for first, second in DESCRIPTIONS:
                recs, images = [Recorder(), Recorder()], []
                stats: list[Any] = []
                include: set[int] = set()
                for rec, description, replay in zip(recs, (first, second), (False, True), strict=True):
                    wrap = norm_wrap(include, vae_too, rec.wrap) if norm else rec.wrap
                    with frozen_group_norm(stats, norm if replay or norm == "uncond" else "record",
                                           lambda m, include=include: id(m) in include) if norm \
                            else contextlib.nullcontext():
                        images.append(bench.run(100 + seed, description, B_DESC, method, wrap=wrap)[0])
                pairs.append((images[0], images[1]))
                h, w = recs[0].decoded.shape[-2:]
                inside, _, far = cell_masks(recs[0].fractions, h, w)
                d0 = (recs[0].outputs[0][1:] - recs[1].outputs[0][1:]).abs().mean(dim=(0, 1)).numpy()
                dz = (recs[0].decoded - recs[1].decoded).abs().mean(dim=(0, 1)).numpy()
                first_pass.append(d0[inside].mean() / d0[far].mean())
                final.append(dz[inside].mean() / dz[far].mean())
        a_in, b_in, out_a, ratio = bench.figures(pairs)
        print(f"{label:38s} one pass in/far {np.mean(first_pass):5.2f}  final latents in/far {np.mean(final):5.2f}  "
              f"pixels: inside A {a_in:5.2f}  inside B {b_in:5.2f}  outside A {out_a:5.2f}  ratio {ratio:5.2f}",
              flush=True)


def vae(bench: Bench, seeds: int) -> None:
    """The VAE decoder alone: random latents, a change confined to A's latent cells, decoded."""
    print("## vae: a latent change confined to A's cells, decoded by the VAE: pixels inside A / outside A")
    import torch
    from diffusers import AutoencoderKL

    decoder = AutoencoderKL.from_pretrained(bench.models_dir / "sd15" / "vae").eval()
    size = bench.size // 4  # the tiny VAE's latents are 1/4 of the image
    a = torch.nn.functional.interpolate(torch.from_numpy(bench.in_a).float()[None, None], size=(size, size),
                                        mode="area")
    attention = decoder.decoder.mid_block.attentions[0]
    for label, attention_off, held in (("as is", False, False), ("GroupNorm statistics held", False, True),
                                       ("mid-block self-attention off", True, False), ("both", True, True)):
        generator = torch.Generator().manual_seed(0)
        pairs = []
        for _ in range(4 * seeds):
            one = torch.randn(1, 4, size, size, generator=generator) * 3
            two = one + a * torch.randn(1, 4, size, size, generator=generator) * 1.5
            stats: list[Any] = []
            images = []
            if attention_off:
                attention.forward = lambda hidden, *args, **kwargs: hidden
            try:
                for z, mode in ((one, "record"), (two, "replay" if held else "record")):
                    with torch.no_grad(), frozen_group_norm(stats, mode, lambda module: True):
                        image = decoder.decode(z).sample[0].permute(1, 2, 0).numpy()
                    images.append((image / 2 + 0.5) * 255)
            finally:
                if attention_off:
                    del attention.forward
            pairs.append((images[0], images[1]))
        a_in, b_in, out_a, ratio = bench.figures(pairs)
        print(f"VAE only, {label:30s} inside A {a_in:6.2f}  inside B {b_in:6.2f}  outside A {out_a:6.2f}  "
              f"ratio {ratio:5.2f}", flush=True)


def anchor(bench: Bench, seeds: int) -> None:
    print("## anchor: latents outside every character pinned to the shot-prompt-only trajectory")
    pairs, seconds = [], []
    for seed in range(seeds):
        trajectory: list[tuple[Any, Any]] = []
        keep: list[Any] = []
        with anchored(None, trajectory, keep):
            _, t0 = bench.run(100 + seed, "", "", "attention", wrap=lambda i, keep=keep: chars_weight(i, keep))
        for first, second in DESCRIPTIONS:
            frames = []
            for description in (first, second):
                with anchored(trajectory, None, keep):
                    image, t = bench.run(100 + seed, description, B_DESC, "attention",
                                         wrap=lambda i, keep=keep: chars_weight(i, keep))
                frames.append(image)
                seconds.append(t + t0)  # the background pass costs as much as the frame's own
            pairs.append((frames[0], frames[1]))
    bench.report("description of A changed [attention+anchor]", pairs, seconds)


def geometry(bench_args: argparse.Namespace) -> None:
    print("## geometry: masked cross-attention at other step counts and sizes")
    for size, steps, seeds in ((64, 1, 3), (64, 3, 3), (64, 30, 1), (256, 10, 1), (128, 10, 1)):
        bench = Bench(bench_args.models, size, steps, bench_args.device)
        for method in ("attention", "concat") if size == 64 else ("attention",):
            pairs, seconds = bench.description_pairs(seeds, method)
            bench.report(f"{size}px {steps:2d} steps [{method}]", pairs, seconds)
        bench.manager.stop()


def all_layers(installed: Callable[..., Any]) -> Callable[..., Any]:
    """The processor context with the style slot applied in every cross-attention layer, not the style layers only."""
    @contextlib.contextmanager
    def context(unet: Any, nets: list[Any], state: Any, ip: Any = None) -> Iterator[None]:
        with installed(unet, nets, state, ip):
            for processor in unet.attn_processors.values():
                if hasattr(processor, "style_layer"):
                    processor.style_layer = True
            yield
    return context


def layout_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A reference whose content is a layout: a random half-plane in one colour over another."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    angle, offset = rng.uniform(0, 2 * np.pi), rng.uniform(-0.2, 0.2)
    side = (np.cos(angle) * x + np.sin(angle) * y > offset)[..., None]
    one, two = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return np.where(side, one, two).astype(np.uint8)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-9))


def style(bench: Bench, seeds: int, refs: int = 6) -> None:
    """Style reference: does the frame take the reference's layout (content) or keep the depth map's?"""
    print("## style: |corr| of the frame's low-frequency luminance (8x8 cells) with the reference's and the depth's; "
          "'change': the same for the frame's change (with reference - without); 6 half-plane references")
    from bench_identity import png

    rng = np.random.default_rng(5)
    images = [layout_image(rng, 64) for _ in range(refs)]
    shas = [bench.put(png(image)) for image in images]
    depth = lowpass(bench.depth)
    for adapter in ("ip-adapter.safetensors", "ip-adapter-plus.safetensors"):
        bench.base_models["ip_adapter"] = str(bench.models_dir / adapter)
        rows: dict[str, list[tuple[float, ...]]] = {}
        for seed in range(seeds):
            plain, _ = bench.run(500 + seed, "", "", "plain")
            for index, (image, sha) in enumerate(zip(images, shas, strict=True)):
                ref = lowpass(image.astype(np.float32))
                other = lowpass(images[(index + 1) % len(images)].astype(np.float32))
                for label, wrap in (("style layers only (engine)", None), ("all layers", all_layers)):
                    out, _ = bench.run(500 + seed, "", "", "plain", wrap=wrap, style_reference=sha)
                    change = lowpass(out) - lowpass(plain)
                    rows.setdefault(label, []).append((
                        abs(corr(lowpass(out), ref)), abs(corr(change, ref)), abs(corr(lowpass(out), depth)),
                        abs(corr(lowpass(plain), ref)), float(np.abs(out - plain).mean()), abs(corr(change, other))))
        for label, values in rows.items():
            v = np.mean(values, axis=0)
            print(f"[{adapter}] {label:28s} frame~ref {v[0]:.2f} (without the reference {v[3]:.2f})  "
                  f"change~ref {v[1]:.2f} (another reference's layout, chance: {v[5]:.2f})  frame~depth {v[2]:.2f}  "
                  f"mean change {v[4]:5.2f}", flush=True)
    bench.base_models["ip_adapter"] = str(bench.models_dir / "ip-adapter.safetensors")


def lowpass(image: np.ndarray, cells: int = 8) -> np.ndarray:
    grey = image.mean(axis=2) if image.ndim == 3 else image
    h, w = grey.shape
    return grey.reshape(cells, h // cells, cells, w // cells).mean(axis=(1, 3)).ravel()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", required=True, help="make-tiny-models folder")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default="trace,frozen,vae,anchor,style,geometry")
    args = parser.parse_args()
    only = set(args.only.split(","))
    bench = Bench(args.models, args.size, args.steps, args.device)
    print(f"# {args.size}x{args.size}, {args.steps} steps, {args.seeds} seeds x {len(DESCRIPTIONS)} descriptions, "
          f"device {args.device}")
    bench.run(0, "warm up", "warm up", "attention")
    if "trace" in only:
        trace(bench, args.seeds)
    if "frozen" in only:
        frozen(bench, args.seeds)
    if "anchor" in only:
        pairs, seconds = bench.description_pairs(args.seeds, "attention")
        bench.report("description of A changed [attention]", pairs, seconds)
        anchor(bench, args.seeds)
    if "vae" in only:
        vae(bench, args.seeds)
    if "style" in only:
        style(bench, args.seeds)
    bench.manager.stop()
    if "geometry" in only:
        geometry(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
