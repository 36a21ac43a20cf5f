"""The README points at code by `file.py:line`; those lines move when the code does."""

from __future__ import annotations

import re

from tests.conftest import ROOT

SRC = ROOT / "src" / "gptlab"


def test_readme_line_references_land_on_code():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    refs = set(re.findall(r"`(?:src/gptlab/)?([\w/]+\.py):(\d+)`", text))
    assert len(refs) >= 10  # the "why the model looks the way it does" section
    for path, line in sorted(refs):
        lines = (SRC / path).read_text(encoding="utf-8").splitlines()
        assert int(line) <= len(lines), f"README cites {path}:{line}, past the end of the file"
        code = lines[int(line) - 1].strip()
        assert code and not code.startswith(("#", '"""')), f"README cites {path}:{line}, which is {code!r}"
