"""Regional prompts and references: how concentrated in the character's mask, and at what cost.

Runs the engine in-process (JobManager, tiny or given models) on a two-character frame:
character A owns a left band, B a right band, the rest is background. For each method it
generates the frame twice, changing only A's description (or A's reference image), and
prints the mean absolute pixel change inside A's mask, inside B's mask and outside A
(0..255), their ratio, and the model seconds per frame.

Methods:
- ``attention+bounded-self``: the engine's method (engine/regional.py): masked cross-attention and
  bounded self-attention (a character's cells never attended to by another's or the background).
- ``attention``: masked cross-attention only.
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
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import identity as identity_module  # noqa: E402
from engine import regional  # noqa: E402
from engine.jobs import JobManager  # noqa: E402
from engine.schema import JobRequest  # noqa: E402
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=None, help="make-tiny-models folder (default: build tiny ones)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-identity-"))
    models_dir = Path(args.models) if args.models else work / "models"
    if not args.models:
        from engine.tiny import make_tiny_models

        make_tiny_models(models_dir)
    storage = Storage(work / "data")
    manager = JobManager(storage, args.device, max_pipelines=1)
    manager.start()

    def put(data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        storage.put_blob(sha, data)
        return sha

    def png(array: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        return buf.getvalue()

    size = args.size
    mask = np.zeros((size, size), np.uint16)
    a_cols, b_cols = slice(size // 8, size * 7 // 16), slice(size * 9 // 16, size * 7 // 8)
    mask[size // 8:, a_cols] = 3
    mask[size // 8:, b_cols] = 5
    in_a, in_b = mask == 3, mask == 5
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    depth = (np.clip(0.3 + 0.5 * (mask > 0) + 0.2 * (1 - y), 0, 1) * 65535).astype(np.uint16)
    frame = {"frame": 1, "depth": put(png(depth)), "pose": None, "mask": put(png(mask))}
    rng = np.random.default_rng(0)
    refs = [put(png(rng.integers(0, 255, (64, 64, 3)).astype(np.uint8))) for _ in range(2)]
    base_models = {"base": str(models_dir / "sd15"), "controlnet_depth": str(models_dir / "controlnet-depth"),
                   "controlnet_pose": None, "ip_adapter": str(models_dir / "ip-adapter.safetensors")}

    def run(seed: int, a_desc: str, b_desc: str, method: str, a_ref: str | None = None) -> tuple[np.ndarray, float]:
        body: dict[str, Any] = {"shot": "bench", "prompt": "two people on a street", "style_prompt": "film still",
                                "seed": seed, "steps": args.steps, "width": size, "height": size,
                                "device": args.device, "models": dict(base_models), "frames": [frame]}
        if method == "concat":
            body["prompt"] += f", {a_desc}, {b_desc}"
        else:
            body["characters"] = [
                {"name": "A", "description": a_desc, "mask_ids": [3], "references": [a_ref] if a_ref else []},
                {"name": "B", "description": b_desc, "mask_ids": [5]},
            ]
        patch: Any = contextlib.nullcontext()
        regional.BOUNDED_SELF_ATTENTION = method == "attention+bounded-self"
        if method == "composition":
            original = identity_module.installed
            identity_module.installed = composition_installed  # type: ignore[assignment]
            patch = contextlib.ExitStack()
            patch.callback(lambda: setattr(identity_module, "installed", original))
        with patch:
            job = manager.submit(JobRequest.model_validate(body))
            while job.status not in ("done", "failed", "cancelled"):
                time.sleep(0.02)
        assert job.status == "done", job.error
        path = storage.frame_path(job.frame_keys[1])
        with Image.open(path) as img:
            image = np.asarray(img.convert("RGB")).astype(np.float32)
        path.unlink()  # the next method must not read this one's frame from the cache
        return image, job.timings["model_s"]

    def report(label: str, pairs: list[tuple[np.ndarray, np.ndarray]], seconds: list[float]) -> None:
        a_in, b_in, out_a = [], [], []
        for one, two in pairs:
            diff = np.abs(one - two).mean(axis=2)
            a_in.append(diff[in_a].mean())
            b_in.append(diff[in_b].mean())
            out_a.append(diff[~in_a].mean())
        ratio = np.mean(a_in) / max(np.mean(out_a), 1e-6)
        print(f"{label:46s} inside A {np.mean(a_in):6.2f}  inside B {np.mean(b_in):6.2f}  outside A "
              f"{np.mean(out_a):6.2f}  ratio {ratio:6.2f}  model {np.mean(seconds) * 1000:7.1f} ms/frame", flush=True)

    print(f"# {size}x{size}, {args.steps} steps, {args.seeds} seeds x {len(DESCRIPTIONS)} descriptions, "
          f"device {args.device}, models {models_dir}")
    run(0, "warm up", "warm up", "attention+bounded-self")
    for method in ("attention+bounded-self", "attention", "composition", "concat"):
        pairs, seconds = [], []
        for seed in range(args.seeds):
            for first, second in DESCRIPTIONS:
                one, t1 = run(100 + seed, first, "a tall man in a grey cloak", method)
                two, t2 = run(100 + seed, second, "a tall man in a grey cloak", method)
                pairs.append((one, two))
                seconds += [t1, t2]
        report(f"description of A changed [{method}]", pairs, seconds)
    pairs, seconds = [], []
    for seed in range(args.seeds):
        one, t1 = run(200 + seed, "a woman", "a man", "attention+bounded-self", refs[0])
        two, t2 = run(200 + seed, "a woman", "a man", "attention+bounded-self", refs[1])
        pairs.append((one, two))
        seconds += [t1, t2]
    report("reference of A changed [attention+bounded-self]", pairs, seconds)
    plain = [run(300 + s, "", "", "concat")[1] for s in range(args.seeds)]
    print(f"{'no characters (stock processors)':46s} model {np.mean(plain) * 1000:7.1f} ms/frame")
    manager.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
