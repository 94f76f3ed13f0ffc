"""The layers of docs/ARCHITECTURE.md hold: the import contract, no cycles, no import of the package root."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

PACKAGE = Path(__file__).resolve().parents[1] / "snapstore"
ROOT = PACKAGE.parent


def _contract() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        (contract,) = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    return contract


def test_the_layers_contract_holds():
    # in a process of its own: import-linter prints through rich, which keeps the stdout it first saw
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


def test_no_module_imports_the_package_root():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "snapstore" for a in node.names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            absolute = isinstance(node, ast.ImportFrom) and node.level == 0
            if absolute and (node.module or "").split(".")[0] == "snapstore":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.level > 0 and node.module is None and path.parent == PACKAGE:
                offenders.extend(f"{path.relative_to(ROOT)}:{node.lineno}" for a in node.names if a.name == "snapstore")
    assert offenders == [], "import within the package by relative imports of the module itself, never `snapstore`"


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph("snapstore", exclude_type_checking_imports=True, cache_dir=None)
    # a package's __init__ re-exports its own modules: those edges are not dependencies between modules
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if not i.startswith(m + ".")}
             for m in graph.modules}
    for edge in _contract()["ignore_imports"]:  # the listed lazy imports of optional exporters
        importer, imported = edge.split(" -> ")
        edges[importer].discard(imported)
    cycles = []
    for start in sorted(edges):  # a depth-first search from each module back to itself
        stack, seen = [(start, (start,))], set()
        while stack:
            module, path = stack.pop()
            for nxt in sorted(edges[module]):
                if nxt == start:
                    cycles.append(" -> ".join((*path, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*path, nxt)))
    assert cycles == []


def test_mypy_finds_nothing_in_the_package():
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "snapstore"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_finds_nothing():  # line length included: pyproject.toml's [tool.ruff]
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "snapstore", "tests", "benchmarks"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
