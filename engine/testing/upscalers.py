"""Random-weight upscaler files for tests and GPU timing (Finalize Take, engine/models/upscale.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_upscalers(out: Path, preset: str = "tiny", seed: int = 0) -> dict[str, Path]:
    """Random-weight upscaler files spandrel recognises, x2 and x4.

    ``tiny``: Real-ESRGAN Compact with 8 features and 2 convs (a few thousand parameters),
    its residual scaled down so it behaves like a nearest-neighbour upscaler plus a little
    noise, for tests; ``full``: the sizes of realesr-general-x4v3-like Compact x2 (64
    features, 32 convs) and RealESRGAN_x4plus (RRDBNet, 64 features, 23 blocks), for timing
    on a GPU without downloading weights.
    """
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    small = preset == "tiny"
    models: dict[str, Any] = {
        "upscaler_x2": Compact(num_in_ch=3, num_out_ch=3, num_feat=8 if small else 64,
                               num_conv=2 if small else 32, upscale=2),
        "upscaler_x4": Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4) if small else
        ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4),
    }
    paths = {}
    out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        if small:
            # Random weights of this size would swamp the image; keep the residual small so the
            # tiny model behaves like an upscaler (its Compact adds a nearest-upscaled input).
            with torch.no_grad():
                for param in model.parameters():
                    param.mul_(0.1)
        path = out / f"{name.replace('_', '-')}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        paths[name] = path
    return paths
