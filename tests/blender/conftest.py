"""Real Blender for tests: build the extension with Blender's own builder, install it
the way a user would (into the throwaway user folder set up by tests/conftest.py),
enable it, and reset to an empty file before each test."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

bpy = pytest.importorskip("bpy")

ROOT = Path(__file__).resolve().parents[2]
MODULE = "bl_ext.user_default.viewfinder"


def blender_ext_cli() -> Path:
    """Blender's extension validator/builder, shipped inside the bpy wheel."""
    cli = Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    assert cli.is_file(), f"Blender's extension builder is missing: {cli}"
    return cli


def build_extension(output_dir: Path) -> Path:
    cli = blender_ext_cli()
    subprocess.run(
        [sys.executable, str(cli), "validate", str(ROOT)], check=True, capture_output=True, text=True
    )
    zip_path = output_dir / "viewfinder.zip"
    result = subprocess.run(
        [sys.executable, str(cli), "build", "--source-dir", str(ROOT), "--output-filepath", str(zip_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return zip_path


@pytest.fixture(scope="session")
def extension_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_extension(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="session")
def vf(extension_zip: Path) -> ModuleType:
    """The installed, enabled extension module (`bl_ext.user_default.viewfinder`)."""
    if MODULE not in sys.modules:
        result = bpy.ops.extensions.package_install_files(
            repo="user_default", filepath=str(extension_zip), enable_on_install=True
        )
        assert result == {"FINISHED"}
    return importlib.import_module(MODULE)


@pytest.fixture()
def scene(vf: ModuleType) -> Iterator[bpy.types.Scene]:
    """An empty file with the extension enabled."""
    bpy.ops.wm.read_homefile(use_empty=True)
    yield bpy.context.scene


@pytest.fixture(scope="session")
def vfmod(vf: ModuleType):
    """Import a submodule of the installed extension: `vfmod("core.timeline.vse")`."""

    def load(name: str) -> ModuleType:
        return importlib.import_module(f"{vf.__name__}.{name}")

    return load


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random-weight SD 1.5 + ControlNets, made by the engine's own command."""
    from blender_scenes import engine_python

    out = tmp_path_factory.mktemp("tiny-models")
    subprocess.run([engine_python(), "-m", "engine", "make-tiny-models", str(out)], cwd=ROOT, check=True,
                   capture_output=True, timeout=600)
    return out


@pytest.fixture()
def local_engine(monkeypatch: pytest.MonkeyPatch, vf: ModuleType) -> None:
    """Generate starts a local engine child with the test engine interpreter, never a user's engine."""
    from blender_scenes import engine_python

    monkeypatch.setenv("VIEWFINDER_ENGINE_PYTHON", engine_python())
    monkeypatch.delenv("VIEWFINDER_ENGINE_URL", raising=False)
