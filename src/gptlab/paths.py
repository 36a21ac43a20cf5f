"""The one locator for the files that ship inside the package (package data under gptlab/assets).

Everything found through here is installed with gptlab (pyproject's package-data), so it is found
the same way from a source checkout and from `pip install .`.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"


def asset(*parts: str) -> Path:
    """The path of a shipped file or folder, e.g. asset("data", "tinyshakespeare.txt")."""
    return ASSETS.joinpath(*parts)


SHIPPED_SHAKESPEARE = asset("data", "tinyshakespeare.txt")
