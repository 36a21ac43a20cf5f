"""The README points at code by symbol (`model.py: Block.forward`), so a rename breaks a test, not a reader."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

SRC = ROOT / "src" / "gptlab"
SYMBOL_REF = re.compile(r"`(?:src/gptlab/)?([\w/]+\.py): ([A-Za-z_][\w.]*)`")


def defines(body: list[ast.stmt], name: str) -> ast.AST | None:
    """The class, function or (annotated) assignment named `name` at this level of a module or class."""
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node
    return None


def resolve(path: Path, dotted: str) -> ast.AST | None:
    """The definition `Class.method` (or `function`, `Class.field`) in the Python file `path`, or None."""
    node: ast.AST = ast.parse(path.read_text(encoding="utf-8"))
    for part in dotted.split("."):
        node = defines(getattr(node, "body", []), part)
        if node is None:
            return None
    return node


def readme_refs() -> list[tuple[str, str]]:
    return sorted(set(SYMBOL_REF.findall((ROOT / "README.md").read_text(encoding="utf-8"))))


def test_readme_cites_code_by_symbol_not_line():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    by_line = re.findall(r"`(?:src/gptlab/)?[\w/]+\.py:\d+`", text)
    assert not by_line, f"README cites code by line number, which drifts: {by_line}; cite `file.py: Class.method`"
    assert len(readme_refs()) >= 10  # the "Design choices" section


@pytest.mark.parametrize(("path", "symbol"), readme_refs())
def test_readme_symbol_exists(path, symbol):
    file = SRC / path
    assert file.is_file(), f"README cites {path}: {symbol}, but src/gptlab/{path} does not exist"
    assert resolve(file, symbol) is not None, f"README cites {path}: {symbol}, which {path} does not define"


def test_resolve_finds_methods_and_fields_and_misses_renamed_ones():
    model = SRC / "model.py"
    assert isinstance(resolve(model, "Block.forward"), ast.FunctionDef)
    assert isinstance(resolve(model, "GPTConfig.gelu_approximate"), ast.AnnAssign)
    assert resolve(model, "Block.forwards") is None and resolve(model, "Blocks.forward") is None
    assert resolve(model, "forward") is None  # a method is not a module-level function
