"""vocab_report.py end to end on a small text with tiny vocabularies."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptlab.analysis.vocab import vocab_report

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT / "src" / "gptlab" / "assets" / "data" / "tinyshakespeare.txt"


def test_vocab_report_script(tmp_path):
    text = tmp_path / "small.txt"
    text.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    out = tmp_path / "report"
    result = subprocess.run(
        [
            sys.executable,
            "vocab_report.py",
            f"text={text}",
            "vocab_sizes=[256,300,400]",
            f"out={out}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = (out / "report.md").read_text(encoding="utf-8")
    for section in ("## Compression", "## First 20 merges", "## Longest tokens", "## How rare words split"):
        assert section in report
    assert "| 400 |" in report and "| 256 | 30,000 | 1.00 |" in report  # bytes only: one token per byte
    assert (out / "zipf.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "vocab.tsv").read_text(encoding="utf-8").splitlines()) == 1 + 400
    assert (out / "bpe_400.json").exists()


def test_vocab_report_rejects_sizes_below_bytes(tmp_path):
    with pytest.raises(ValueError, match="vocab_sizes=\\[100\\]"):
        vocab_report("hello", [100], tmp_path)
