"""Fixtures for the engine tests: tiny models, a real engine process, control maps.

Run with the engine's environment from the repository root:
    .venv-engine/bin/python -m pytest tests/engine -q
The engine is started through the add-on's own ``core/client/process.py`` and driven
over HTTP with ``core/client/http.py``, the same path Blender takes.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The engine package itself, for the in-process unit tests (tests/engine has no __init__).
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
from engine_testlib import fault_env, fault_python, start_local_engine  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
os.environ["HF_HUB_OFFLINE"] = "1"


def _load_core() -> types.ModuleType:
    """Import ``core`` as a package by path: the repository root's __init__ is Blender's."""
    name = "vf_core_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "core" / "__init__.py", submodule_search_locations=[str(ROOT / "core")]
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def core() -> types.SimpleNamespace:
    package = _load_core()
    return types.SimpleNamespace(
        client=importlib.import_module(f"{package.__name__}.client.http"),
        process=importlib.import_module(f"{package.__name__}.client.process"),
        install=importlib.import_module(f"{package.__name__}.client.install"),
    )


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny random-weight models written by the CLI, as a user would."""
    out = tmp_path_factory.mktemp("tiny-models")
    subprocess.run([sys.executable, "-m", "engine", "make-tiny-models", str(out)], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    return {"base": str(out / "sd15"), "depth": str(out / "controlnet-depth"), "pose": str(out / "controlnet-pose"),
            "lora": str(out / "lora.safetensors"), "wan_vace": str(out / "wan-vace"),
            "motion_adapter": str(out / "motion-adapter"), "ip_adapter": str(out / "ip-adapter.safetensors"),
            "ip_adapter_plus": str(out / "ip-adapter-plus.safetensors"),
            "image_encoder": str(out / "image-encoder"), "draft_lora": str(out / "lcm-lora.safetensors"),
            "tiny_vae": str(out / "tiny-vae"), "normal": str(out / "controlnet-normal"),
            "lineart": str(out / "controlnet-lineart"), "seg": str(out / "controlnet-seg"),
            # Issue 24 (engine/testing/tiny_families.py): SDXL and Flux.1, union nets, LoRAs, single files.
            "sdxl": str(out / "sdxl"), "union_sdxl": str(out / "controlnet-union-sdxl"),
            "sdxl_depth": str(out / "controlnet-depth-sdxl"), "flux": str(out / "flux"),
            "union_flux": str(out / "controlnet-union-flux"), "sdxl_lora_kohya": str(out / "sdxl-lora-kohya.safetensors"),
            "sdxl_lora": str(out / "sdxl-lora.safetensors"), "sdxl_draft_lora": str(out / "sdxl-lcm-lora.safetensors"),
            "sdxl_ip_adapter": str(out / "ip-adapter-sdxl" / "ip-adapter.safetensors"),
            "flux_lora": str(out / "flux-lora.safetensors"), "sd15_file": str(out / "sd15.safetensors"),
            "sdxl_file": str(out / "sdxl.safetensors")}


@pytest.fixture(scope="session")
def engine(core: types.SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One engine process for the session, with the out-of-memory test hook on frame 999."""
    data = tmp_path_factory.mktemp("engine-data")
    local = start_local_engine(core, data, python=fault_python(data), **fault_env())
    yield local
    local.stop()


@pytest.fixture()
def client(engine: Any) -> Any:
    return engine.client(timeout=30)


