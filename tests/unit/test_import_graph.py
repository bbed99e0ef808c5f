"""The import graph of the add-on and the engine: no circles, and nothing reaching above its package.

Read from the source with ``ast`` (nothing is imported), so it runs in any Python. Every import
counts: module level, inside functions, and under ``TYPE_CHECKING`` (a circle of type hints is
still two modules that cannot be read one without the other).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The add-on is the repository root as a package; engine/ and core/ are packages inside it that
# must stand alone (core/ is loaded by path without the root package in tests and benchmarks,
# engine/ runs in its own process).
SKIP = {".venv", ".venv-bpy42", ".venv-engine", ".git", "tests", "benchmarks", "demo", "deploy", "build",
        "dist", "toyworld"}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name (relative to the repository root) -> file, for the shipped tree."""
    found = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIP or "__pycache__" in rel.parts:
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in ``path`` that names a module of the tree."""
    is_package = path.name == "__init__.py"
    package = name.split(".") if is_package else name.split(".")[:-1]
    if name == "":
        package = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                keep = len(package) - (node.level - 1)
                assert keep >= 0, f"{path}:{node.lineno}: a relative import above the repository root"
                base = ".".join(package[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                if full in modules:
                    yield full, node.lineno
                elif base in modules:
                    yield base, node.lineno
                elif base and not node.level and base.split(".")[0] in ("engine", "core"):
                    raise AssertionError(f"{path}:{node.lineno}: imports {base}, which is not in the tree")
                elif node.level:
                    raise AssertionError(f"{path}:{node.lineno}: imports .{base}, which is not in the tree")


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    modules = module_files(root)
    return {name: dict(imports_of(name, path, modules)) for name, path in modules.items()}


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan; the tree is small enough for recursion
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, {}):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, {}):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    """Imports from engine/ or core/ to anything outside their own package (the add-on above them,
    or each other: the engine never imports the add-on, the add-on talks to it over HTTP)."""
    wrong = []
    for name, targets in graph.items():
        top = name.split(".")[0]
        if top not in ("engine", "core"):
            continue
        for target, line in targets.items():
            if target.split(".")[0] != top:
                wrong.append(f"{name}:{line} imports {target or 'the add-on root'}")
    return wrong


def test_the_tree_has_no_import_circle() -> None:
    graph = import_graph()
    assert len(graph) > 100 and "engine.jobs.manager" in graph and "core.generate.run" in graph
    assert cycles(graph) == []


def test_engine_and_core_import_nothing_above_them() -> None:
    assert upward_imports(import_graph()) == []


def test_the_checks_find_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    """The same checks on a small tree that has both faults, so they can fail."""
    for rel, text in {
        "__init__.py": "",
        "prefs_ui.py": "",
        "engine/__init__.py": "",
        "engine/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "engine/b.py": "def f():\n    from . import a\n",
        "core/__init__.py": "",
        "core/x/__init__.py": "",
        "core/x/y.py": "from ...prefs_ui import Prefs\nfrom ..z import w\n",
        "core/z.py": "w = 1\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["core.x.y"] == {"prefs_ui": 1, "core.z": 2}
    assert cycles(graph) == [["engine.a", "engine.b"]]
    assert upward_imports(graph) == ["core.x.y:1 imports prefs_ui"]


def test_folders_found_from_a_module_s_own_path_survive_the_layout() -> None:
    """Modules that find the extension or the engine from ``__file__`` (moved modules get this wrong)."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from helpers import load
    finally:
        sys.path.remove(str(ROOT / "tests"))
    assert load("core.client.process").EXTENSION_DIR == ROOT
    assert load("core.client.install").ENGINE_DIR == ROOT / "engine"
    # engine/ray/serve.py imports ray: read where it points py_modules at instead of importing it.
    source = (ROOT / "engine" / "ray" / "serve.py").read_text()
    assert "engine_dir = str(Path(__file__).resolve().parents[1])" in source
