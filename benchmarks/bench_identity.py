"""Regional prompts and references: how concentrated in the character's mask, and at what cost.

Runs the engine in-process (JobManager, tiny or given models) on a two-character frame:
character A owns a left band, B a right band, the rest is background. For each method it
generates the frame twice, changing only A's description (or A's reference image), and
prints the mean absolute pixel change inside A's mask, inside B's mask and outside A
(0..255), their ratio, and the model seconds per frame. ``bench_identity_leak.py`` reuses ``Bench``
to find where the change outside A comes from.

Methods:
- ``attention+bounded-self``: masked cross-attention and bounded self-attention (a character's cells
  never attended to by another's or the background); measured no better, off in the engine.
- ``attention``: masked cross-attention only: the engine's method (engine/characters/regional.py).
- ``composition``: noise-prediction composition: the UNet runs once per region (shot prompt
  alone for the background, shot prompt + character k for region k) and the predictions
  are combined by the masks (MultiDiffusion-style); K+1 UNet passes per step.
- ``concat``: the baseline without masks: every description appended to the shot prompt.

    .venv-engine/bin/python benchmarks/bench_identity.py [--models DIR] [--size 64] [--seeds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import png  # noqa: E402

from engine.characters import identity as identity_module  # noqa: E402
from engine.characters import regional  # noqa: E402
from engine.contract.schema import JobRequest  # noqa: E402
from engine.jobs.manager import JobManager  # noqa: E402
from engine.storage import Storage  # noqa: E402

DESCRIPTIONS = [("a woman in a bright red coat", "a man in a dark green suit"),
                ("an old knight in silver armour", "a child in a yellow raincoat")]


@contextlib.contextmanager
def composition_installed(unet: Any, nets: list[Any], state: Any, ip: Any = None) -> Any:
    """Noise-prediction composition in place of the masked attention (same masks, same prompts)."""
    import torch

    original = unet.forward

    def forward(sample: Any, timestep: Any, encoder_hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        length = state.block_len
        h, w = sample.shape[-2:]
        weights = state.fractions(h * w, sample.device, sample.dtype)
        weights = weights.repeat(sample.shape[0] // weights.shape[0], 1, 1).view(sample.shape[0], -1, h, w)
        shot = encoder_hidden_states[:, :length]
        total = original(sample, timestep, shot, *args, **kwargs)[0] * weights[:, :1]
        for k in range(1, state.blocks + 1):
            text = torch.cat([shot, encoder_hidden_states[:, k * length:(k + 1) * length]], dim=1)
            total = total + original(sample, timestep, text, *args, **kwargs)[0] * weights[:, k:k + 1]
        return (total,)

    unet.forward = forward
    try:
        yield
    finally:
        del unet.forward


class Bench:
    """The engine in-process (JobManager) and one two-character frame: A a left band, B a right band."""

    def __init__(self, models: str | None, size: int, steps: int, device: str) -> None:
        self.size, self.steps, self.device = size, steps, device
        work = Path(tempfile.mkdtemp(prefix="bench-identity-"))
        self.models_dir = Path(models) if models else work / "models"
        if not models:
            from engine.testing.tiny import make_tiny_models

            make_tiny_models(self.models_dir)
        self.storage = Storage(work / "data")
        self.manager = JobManager(self.storage, device, max_pipelines=1)
        self.manager.start()
        mask = np.zeros((size, size), np.uint16)
        a_cols, b_cols = slice(size // 8, size * 7 // 16), slice(size * 9 // 16, size * 7 // 8)
        mask[size // 8:, a_cols] = 3
        mask[size // 8:, b_cols] = 5
        self.mask = mask
        self.in_a, self.in_b = mask == 3, mask == 5
        y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
        depth = (np.clip(0.3 + 0.5 * (mask > 0) + 0.2 * (1 - y), 0, 1) * 65535).astype(np.uint16)
        self.depth = depth.astype(np.float32) / 65535
        self.frame = {"frame": 1, "depth": self.put(png(depth)), "pose": None, "mask": self.put(png(mask))}
        rng = np.random.default_rng(0)
        self.refs = [self.put(png(rng.integers(0, 255, (64, 64, 3)).astype(np.uint8))) for _ in range(2)]
        self.base_models = {"base": str(self.models_dir / "sd15"),
                            "controlnet_depth": str(self.models_dir / "controlnet-depth"), "controlnet_pose": None,
                            "ip_adapter": str(self.models_dir / "ip-adapter.safetensors")}

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.storage.put_blob(sha, data)
        return sha

    def run(self, seed: int, a_desc: str, b_desc: str, method: str, a_ref: str | None = None,
            wrap: Any = None, **extra: Any) -> tuple[np.ndarray, float]:
        """One frame (RGB float 0..255) and its model seconds. ``wrap(installed)`` may replace the
        engine's processor context (experiments); ``extra``: more request fields."""
        size = self.size
        body: dict[str, Any] = {"shot": "bench", "prompt": "two people on a street", "style_prompt": "film still",
                                "seed": seed, "steps": self.steps, "width": size, "height": size,
                                "device": self.device, "models": dict(self.base_models), "frames": [self.frame],
                                **extra}
        if method == "concat":
            body["prompt"] += f", {a_desc}, {b_desc}"
        elif method != "plain":  # plain: no characters
            body["characters"] = [
                {"name": "A", "description": a_desc, "mask_ids": [3], "references": [a_ref] if a_ref else []},
                {"name": "B", "description": b_desc, "mask_ids": [5]},
            ]
        regional.BOUNDED_SELF_ATTENTION = method == "attention+bounded-self"
        original = identity_module.installed
        context = composition_installed if method == "composition" else original
        identity_module.installed = wrap(context) if wrap is not None else context  # type: ignore[assignment]
        try:
            job = self.manager.submit(JobRequest.model_validate(body))
            while job.status not in ("done", "failed", "cancelled"):
                time.sleep(0.02)
        finally:
            identity_module.installed = original  # type: ignore[assignment]
            regional.BOUNDED_SELF_ATTENTION = False
        assert job.status == "done", job.error
        path = self.storage.frame_path(job.frame_keys[1])
        with Image.open(path) as img:
            image = np.asarray(img.convert("RGB")).astype(np.float32)
        path.unlink()  # the next method must not read this one's frame from the cache
        return image, job.timings["model_s"]

    def figures(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, float, float]:
        """(inside A, inside B, outside A, ratio): mean absolute change over the pairs, RGB 0..255."""
        a_in, b_in, out_a = [], [], []
        for one, two in pairs:
            diff = np.abs(one - two).mean(axis=2)
            a_in.append(diff[self.in_a].mean())
            b_in.append(diff[self.in_b].mean())
            out_a.append(diff[~self.in_a].mean())
        return (float(np.mean(a_in)), float(np.mean(b_in)), float(np.mean(out_a)),
                float(np.mean(a_in) / max(np.mean(out_a), 1e-6)))

    def report(self, label: str, pairs: list[tuple[np.ndarray, np.ndarray]], seconds: list[float]) -> None:
        a_in, b_in, out_a, ratio = self.figures(pairs)
        cost = f"  model {np.mean(seconds) * 1000:7.1f} ms/frame" if seconds else ""
        print(f"{label:46s} inside A {a_in:6.2f}  inside B {b_in:6.2f}  outside A "
              f"{out_a:6.2f}  ratio {ratio:6.2f}{cost}", flush=True)

    def description_pairs(self, seeds: int, method: str, wrap: Any = None,
                          **extra: Any) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[float]]:
        """A's description changed, B's kept: ``seeds`` x DESCRIPTIONS frame pairs, and the model seconds."""
        pairs, seconds = [], []
        for seed in range(seeds):
            for first, second in DESCRIPTIONS:
                one, t1 = self.run(100 + seed, first, "a tall man in a grey cloak", method, wrap=wrap, **extra)
                two, t2 = self.run(100 + seed, second, "a tall man in a grey cloak", method, wrap=wrap, **extra)
                pairs.append((one, two))
                seconds += [t1, t2]
        return pairs, seconds


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=None, help="make-tiny-models folder (default: build tiny ones)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    bench = Bench(args.models, args.size, args.steps, args.device)
    print(f"# {args.size}x{args.size}, {args.steps} steps, {args.seeds} seeds x {len(DESCRIPTIONS)} descriptions, "
          f"device {args.device}, models {bench.models_dir}")
    bench.run(0, "warm up", "warm up", "attention+bounded-self")
    for method in ("attention+bounded-self", "attention", "composition", "concat"):
        pairs, seconds = bench.description_pairs(args.seeds, method)
        bench.report(f"description of A changed [{method}]", pairs, seconds)
    pairs, seconds = [], []
    for seed in range(args.seeds):
        one, t1 = bench.run(200 + seed, "a woman", "a man", "attention+bounded-self", bench.refs[0])
        two, t2 = bench.run(200 + seed, "a woman", "a man", "attention+bounded-self", bench.refs[1])
        pairs.append((one, two))
        seconds += [t1, t2]
    bench.report("reference of A changed [attention+bounded-self]", pairs, seconds)
    plain = [bench.run(300 + s, "", "", "concat")[1] for s in range(args.seeds)]
    print(f"{'no characters (stock processors)':46s} model {np.mean(plain) * 1000:7.1f} ms/frame")
    bench.manager.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
