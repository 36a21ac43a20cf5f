"""`gptlab-vocab-report` / `python vocab_report.py text=...`: train BPE at several vocabulary sizes on one
text and write a vocabulary report; see conf/vocab_report.yaml."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from gptlab.analysis.vocab import SHIPPED_SHAKESPEARE, vocab_report
from gptlab.entrypoints.config import hydra_entry
from gptlab.errors import MissingFile


@hydra_entry("vocab_report")
def main(cfg: DictConfig) -> None:
    path = Path(cfg.text) if cfg.text else SHIPPED_SHAKESPEARE
    if not path.is_file():
        raise MissingFile(f"text={cfg.text!r}: no such file")
    source = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    report = vocab_report(
        path.read_text(encoding="utf-8"), cfg.vocab_sizes, cfg.out, cfg.pattern, source=str(source)
    )
    print(f"vocabulary report written to {report}")
