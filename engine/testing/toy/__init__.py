"""The toy world's trained models: a small SD 1.5-layout pipeline and its depth and pose ControlNets.

Trained here on random Blender scenes (toyworld/, ``train.py``); the weights are committed in
``weights/`` and described in ``MODEL_CARD.md``. ``python -m engine make-toy-models DIR`` copies
them into the layout of ``make-tiny-models`` (``DIR/sd15``, ``DIR/controlnet-depth``,
``DIR/controlnet-pose``), and the engine loads them through the same code as real models.
"""

from __future__ import annotations

import shutil
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"
FOLDERS = {"base": "sd15", "depth": "controlnet-depth", "pose": "controlnet-pose"}


def make_toy_models(out_dir: str | Path) -> dict[str, Path]:
    """Copy the committed toy-world models into ``out_dir``; returns their folders by role."""
    missing = [name for name in FOLDERS.values() if not (WEIGHTS / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"the toy-world weights are missing ({', '.join(missing)} under {WEIGHTS}): "
                                "restore them from git, or train them (engine/testing/toy/MODEL_CARD.md)")
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, name in FOLDERS.items():
        if (out / name).exists():
            shutil.rmtree(out / name)
        shutil.copytree(WEIGHTS / name, out / name)
        paths[role] = out / name
    for extra in ("MODEL_CARD.md", "training.json"):
        source = WEIGHTS.parent / extra if extra == "MODEL_CARD.md" else WEIGHTS / extra
        if source.is_file():
            shutil.copyfile(source, out / extra)
    return paths
