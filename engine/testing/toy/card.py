"""Write MODEL_CARD.md from a training run's report (weights/training.json).

    .venv-engine/bin/python -m engine.testing.toy.card [engine/testing/toy/weights]

The card is made from the figures the trainer wrote, never typed by hand: data, sizes, steps,
wall times, loss curves (every 25 steps, sampled) and the commands that reproduce the weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from . import WEIGHTS, vocab

STAGES = (("vae", "1. VAE (AutoencoderKL)"), ("unet", "2. UNet + CLIP text encoder"),
          ("controlnet-depth", "3. Depth ControlNet"), ("controlnet-pose", "4. Pose ControlNet"))


def _curve(points: list[list[float]], rows: int = 8) -> str:
    """A few points of a loss curve, evenly spaced, the last included."""
    if not points:
        return "(no steps)"
    picks = sorted({round(i * (len(points) - 1) / max(1, rows - 1)) for i in range(rows)})
    return " → ".join(f"{points[i][1]:.4f} @{int(points[i][0])}" for i in picks)


# The commands that reproduce the committed weights (the Makefile's toy-models target runs the same).
REPRODUCE = (
    ".venv/bin/python toyworld/generate.py --out build/toyworld --split train --shots 800 --frames 8 --workers 2",
    "OMP_NUM_THREADS=1 .venv-engine/bin/python -m engine.testing.toy.train --data build/toyworld \\\n"
    "    --out build/toy-run1 --seed 0",
    "OMP_NUM_THREADS=1 .venv-engine/bin/python -m engine.testing.toy.train --data build/toyworld \\\n"
    "    --out build/toy-run2 --resume build/toy-run1 --depth-steps 900 --pose-steps 250 \\\n"
    "    --zero-lr 3e-3 --high-noise 0.7",
    "OMP_NUM_THREADS=1 .venv-engine/bin/python -m engine.testing.toy.train --data build/toyworld \\\n"
    "    --out build/toy-run3 --resume build/toy-run2 --continue-nets --joint --unet-rate 0.5 \\\n"
    "    --zero-lr 1e-3 --high-noise 0.3 --depth-steps 2000 --pose-steps 200 --seed 4",
    "OMP_NUM_THREADS=1 .venv-engine/bin/python -m engine.testing.toy.train --data build/toyworld \\\n"
    "    --out build/toy-run4 --resume build/toy-run3 --continue-nets --joint --unet-rate 0.5 \\\n"
    "    --zero-lr 1e-3 --high-noise 0.3 --depth-steps 2500 --pose-steps 250 --seed 5",
    "OMP_NUM_THREADS=1 .venv-engine/bin/python -m engine.testing.toy.train --data build/toyworld \\\n"
    "    --out engine/testing/toy/weights --resume build/toy-run4 --continue-nets --joint --unet-rate 1.0 \\\n"
    "    --zero-lr 1e-3 --high-noise 0.3 --depth-steps 2000 --pose-steps 200 --seed 6",
)


def runs(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The training runs behind the weights, first to last (each later run resumed the one before)."""
    chain = [report]
    while "resumed_from" in chain[-1]:
        chain.append(chain[-1]["resumed_from"])
    return chain[::-1]


def _how(stage: dict[str, Any]) -> str:
    """How a ControlNet stage trained, in a few words."""
    if "lr" not in stage:
        return ""
    parts = ["continued" if stage.get("continued") else "new"]
    if stage.get("joint"):
        parts.append(f"UNet and text encoder beside it at {stage.get('unet_rate', 0.1)} of the rate, averages kept")
    elif stage.get("unet_tuned"):
        parts.append(f"UNet beside it at {stage.get('unet_rate', 0.1)} of the rate")
    parts.append(f"zero convolutions at {stage.get('zero_lr', stage['lr']):g}")
    if stage.get("high_noise"):
        parts.append(f"{stage['high_noise']:.0%} high-noise samples")
    if stage.get("thing_weight"):
        parts.append(f"the things' pixels weighed up to {1 + stage['thing_weight']:g}x")
    return "; ".join(parts)


def _stages(report: dict[str, Any]) -> list[str]:
    """One table row per stage of every run (a resumed run shows only the stages it trained)."""
    rows = ["| run | stage | steps | batch | wall | how | loss (start → end, every 25 steps averaged) |",
            "|---:|---|---:|---:|---:|---|---|"]
    chain = runs(report)
    for number, run in enumerate(chain, 1):
        trained = STAGES if number == 1 else STAGES[2:]
        for key, title in trained:
            stage = run.get(key)
            if stage:
                rows.append(f"| {number} | {title} | {stage['steps']} | {stage['batch']} | "
                            f"{stage['wall_s'] / 60:.1f} min | {_how(stage)} | {_curve(stage['loss'])} |")
    return rows


def _closing(report: dict[str, Any]) -> list[str]:
    """The card's last part: how each stage trained, the commands that reproduce it, where it is measured."""
    lines: list[str] = []
    lines += [
        "", f"VAE reconstruction: {report['vae']['psnr_db']} dB PSNR on 512 training frames.",
        "Stage 2 uses 10 % empty captions (classifier-free guidance), min-SNR weighting (gamma 5) and saves EMA "
        "weights (0.999). Stage 3 trains the depth net with the UNet fine-tuned beside it and 20 % of batches "
        "without control, so the UNet alone still draws scenes (with `--joint` the text encoder learns too, and "
        "the UNet and text encoder are saved as their moving averages); stage 4 trains the pose net on "
        "frames with people, the depth net applied beside it as the engine applies both. Each later run resumed "
        "the one before with `--resume` (and `--continue-nets`: its ControlNets go on training). Full curves: "
        "`weights/training.json`.", "",
        "## Reproduce", "```",
        f"make toy-models            # = the {len(REPRODUCE)} commands below",
        *REPRODUCE,
        ".venv-engine/bin/python -m engine.testing.toy.card   # this card, from weights/training.json",
        "```",
        "Same seed, same data and same torch build give the same weights; other CPUs' kernels may differ in the "
        "last bits.", "",
        "## What it is measured on",
        "`benchmarks/bench_toy_world.py` (figures in the README): silhouettes against the exact masks, prompted "
        "colours, two characters kept apart by the bible, one character across shots, FLOW against INDEPENDENT.",
    ]
    return lines


def card(report: dict[str, Any]) -> str:
    arch, params = report["architecture"], report.get("params", {})
    chain = runs(report)
    mb = sum(p.stat().st_size for p in WEIGHTS.rglob("*.safetensors")) / 2**20 if WEIGHTS.is_dir() else 0.0
    lines = [
        "# Toy-world models: model card", "",
        "A small text-to-image model with depth and pose ControlNets, trained from scratch on a toy world that "
        "Blender renders: the project's eyes. It lets tests, benchmarks and `make demo` see whether frames "
        "follow the camera, keep characters to their masks and stay coherent, offline, in seconds. It knows only "
        "the toy world's words and looks; it is not a model to make films with.", "",
        "## Layout",
        "The SD 1.5 folder layout of diffusers (`sd15/` with `vae`, `unet`, `text_encoder`, `tokenizer`, `scheduler`; "
        "`controlnet-depth/`, `controlnet-pose/`), float16 safetensors, "
        f"{mb:.1f} MB in all. `python -m engine make-toy-models DIR` copies them to `DIR/sd15`, "
        "`DIR/controlnet-depth`, `DIR/controlnet-pose`; the engine loads them through the same code as real models.", "",
        "| part | class | size | parameters |", "|---|---|---|---:|",
        f"| VAE | AutoencoderKL | blocks {list(arch['vae']['block_out_channels'])}, latents 4 x 16 x 16 at 64 x 64 "
        f"(1/4 scale), scaling factor {report['vae']['scaling_factor']} | {params.get('vae', 0):,} |",
        f"| UNet | UNet2DConditionModel | blocks {list(arch['unet']['block_out_channels'])}, cross-attention "
        f"{arch['unet']['cross_attention_dim']} at 16 x 16 and 8 x 8 | {params.get('unet', 0):,} |",
        f"| text encoder | CLIPTextModel | {arch['text']['num_hidden_layers']} layers, width "
        f"{arch['text']['hidden_size']}, 77 tokens | {params.get('text_encoder', 0):,} |",
        f"| tokenizer | CLIPTokenizer | byte symbols + one token per grammar word ({len(vocab.words())} words) | |",
        f"| depth ControlNet | ControlNetModel | from the UNet's encoder, conditioning blocks "
        f"{list(arch['conditioning_channels'])} | {params.get('controlnet-depth', 0):,} |",
        f"| pose ControlNet | ControlNetModel | the same | {params.get('controlnet-pose', 0):,} |", "",
        "## Data",
        f"{report['data']['frames']:,} frames of 64 x 64 ({report['data']['with_people']:,} with people) from 800 random "
        "shots of 8 stills each (`toyworld/generate.py --split train --shots 800 --frames 8`): 1-3 things a shot "
        f"(shapes {', '.join(vocab.SHAPES)}; a third are mannequins on the demo's Rigify-named rig in random poses), "
        f"colours {', '.join(vocab.COLOURS)}, patterns {', '.join(vocab.PATTERNS)}, grounds {', '.join(vocab.GROUNDS)}, "
        f"skies {', '.join(vocab.SKIES)}; a random camera each frame. Colour: Workbench (studio light). Control maps: "
        "Viewfinder's own `core.conditioning.render_shot` (the exact depth encoding and OpenPose drawings Generate "
        "sends), read as the engine reads them. Captions from the grammar in `vocab.py`, e.g. "
        "\"a red checkered cube and a blue person on grass under a sunset sky\"; each thing's phrase is kept beside "
        "its mask id. Held-out splits (`heldout`, `cast`, `moves`) use other seeds.", "",
        "## Training",
        f"Seeds {', '.join(str(run['seed']) for run in chain)} (a run each), CPU, {report['torch_threads']} torch thread(s), "
        f"{sum(run['wall_s'] for run in chain) / 60:.0f} min in all on the "
        f"project's 2-core machine while other work ran beside it, in {len(chain)} run(s): stages 1-4, "
        "then each later run stages 3-4 again from the run before (run 2 started new ControlNets from run 1's "
        "UNet; runs 3 on went on training run 2's).", "",
        *_stages(report),
    ]
    lines += _closing(report)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    folder = Path((argv or sys.argv[1:] or [str(WEIGHTS)])[0])
    report = json.loads((folder / "training.json").read_text())
    (WEIGHTS.parent / "MODEL_CARD.md").write_text(card(report))
    print(WEIGHTS.parent / "MODEL_CARD.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
