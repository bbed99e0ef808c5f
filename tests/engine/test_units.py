"""In-process unit tests of the engine's pure parts (no server, no model)."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from engine_testlib import ROOT
from PIL import Image

from engine.coherence.strategies import IndependentCoherence
from engine.contract.errors import BadRequest, ModelUnavailable, is_out_of_memory
from engine.contract.schema import CoherenceSpec, FrameSpec, field_path
from engine.models.codecs import decode_depth, decode_rgb
from engine.models.refs import resolve_ref


def test_depth_decodes_all_16_bits() -> None:
    values = np.array([[0, 1000, 1001, 65535]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    tensor = decode_depth(buf.getvalue())
    assert tuple(tensor.shape) == (3, 1, 4)
    row = tensor[0, 0].numpy()
    assert row[0] == 0.0 and row[3] == 1.0
    # Neighbouring 16-bit levels stay distinct (an 8-bit path would merge them).
    assert row[2] - row[1] == pytest.approx(1 / 65535, rel=1e-3)
    assert np.array_equal(tensor[0].numpy(), tensor[2].numpy())


def test_pose_decodes_rgb() -> None:
    array = np.zeros((2, 2, 3), np.uint8)
    array[0, 1] = (255, 128, 0)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    tensor = decode_rgb(buf.getvalue())
    assert tuple(tensor.shape) == (3, 2, 2)
    assert tensor[:, 0, 1].tolist() == pytest.approx([1.0, 128 / 255, 0.0])


def test_resolve_ref(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert resolve_ref("lllyasviel/control_v11f1p_sd15_depth", "f", "controlnet").kind == "hub"
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    ref = resolve_ref(str(weights), "models.base", "base")
    assert ref.kind == "file" and ref.fingerprint
    # A folder that is not a diffusers pipeline reads like any unusable path (issue 11: answers
    # never tell a client what exists on the engine machine).
    with pytest.raises(ModelUnavailable) as info:
        resolve_ref(str(tmp_path), "models.base", "base")
    assert "not a usable model" in info.value.message and info.value.field == "models.base"
    with pytest.raises(ModelUnavailable):
        resolve_ref("not a model id", "models.base", "base")
    for name in ("x.ckpt", "x.bin", "x.pt", "x.pth"):
        with pytest.raises(BadRequest) as info:
            resolve_ref(str(tmp_path / name), "models.lora", "lora")
        assert info.value.code == "unsafe_model_format"


def test_independent_batches_split_on_control_nets() -> None:
    frames = [FrameSpec(frame=i, depth="a" * 64, pose=("b" * 64 if i in (2, 3, 4) else None)) for i in range(7)]
    strategy = IndependentCoherence(CoherenceSpec())
    batches = list(strategy.batches(frames, 2, lambda f: ("depth", "pose") if f.pose else ("depth",)))
    assert [[f.frame for f in b] for b in batches] == [[0, 1], [2, 3], [4], [5, 6]]
    assert strategy.seeds(batches[0], 77) == [77, 77]


def test_field_path_and_oom_detection() -> None:
    import torch

    assert field_path(("body", "frames", 3, "depth")) == "frames[3].depth"
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_serve_refuses_remote_host_without_token() -> None:
    result = subprocess.run([sys.executable, "-m", "engine", "serve", "--host", "0.0.0.0", "--port", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)})
    assert result.returncode == 2 and "require a token" in result.stderr
