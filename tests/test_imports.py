"""The import graph of gptlab, read from the source with `ast` (function-local imports included, since
they run too): no cycle among gptlab modules, the model imports only torch and the standard
library, and the layers point one way (model ← hf/checkpoint/generation ← lit_module ← entrypoints)."""

from __future__ import annotations

import ast
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "gptlab"
# the bottom layers: none of them may import a module above it
# gptlab.errors (the user-error class) is a leaf: any layer but the model may raise it
LEAF = {"gptlab.errors"}
CORE = {"gptlab.model": set(), "gptlab.hf": {"gptlab.model", "gptlab.checkpoint", *LEAF},
        "gptlab.checkpoint": {"gptlab.model", *LEAF}, "gptlab.generation": {"gptlab.model", "gptlab.decoding", *LEAF},
        "gptlab.decoding": set(LEAF), "gptlab.errors": set()}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def imported_names(path: Path, name: str) -> set[str]:
    """Every module name an import statement anywhere in the file names, relative imports resolved.
    `from a import b` names a.b as well as a, since b may be a submodule."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def graph() -> dict[str, set[str]]:
    """gptlab module → the gptlab modules it imports."""
    mods = modules()
    return {name: {n for n in imported_names(path, name) if n in mods and n != name} for name, path in mods.items()}


def test_the_walker_sees_function_local_and_relative_imports(tmp_path):
    src = tmp_path / "gptlab" / "sub"
    src.mkdir(parents=True)
    (src / "m.py").write_text("import os\ndef f():\n    from gptlab.hf import load\n    from . import other\n"
                              "    from ..model import GPT\n")
    names = imported_names(src / "m.py", "gptlab.sub.m")
    assert {"os", "gptlab.hf", "gptlab.hf.load", "gptlab.sub.other", "gptlab.model", "gptlab.model.GPT"} <= names


def test_no_import_cycle_among_gptlab_modules():
    g = graph()
    assert len(g) > 20 and g["gptlab.hf"] >= {"gptlab.model"}  # the walk found the package
    try:
        TopologicalSorter(g).prepare()
    except CycleError as e:
        pytest.fail(f"import cycle among gptlab modules: {' → '.join(e.args[1])}")


def test_model_imports_only_torch_and_the_standard_library():
    path = modules()["gptlab.model"]
    tops = {n.split(".")[0] for n in imported_names(path, "gptlab.model")} - {""}
    allowed = set(sys.stdlib_module_names) | {"torch", "__future__"}
    assert tops <= allowed, f"gptlab/model.py imports {sorted(tops - allowed)}"


@pytest.mark.parametrize("lower", sorted(CORE))
def test_the_lower_layers_never_import_upward(lower):
    imported = {n for n in graph()[lower] if n != PACKAGE}
    assert imported <= CORE[lower], f"{lower} imports {sorted(imported - CORE[lower])}"


def test_only_entry_points_import_entry_points():
    offenders = {name: sorted(n for n in deps if n.startswith("gptlab.entrypoints"))
                 for name, deps in graph().items() if not name.startswith("gptlab.entrypoints")}
    assert not {k: v for k, v in offenders.items() if v}
