"""Train BPE at several vocabulary sizes on one text and write a vocabulary report; see conf/vocab_report.yaml."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from gptlab.analysis.vocab import SHIPPED_SHAKESPEARE, vocab_report
from gptlab.errors import MissingFile, user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="vocab_report")
@user_errors  # a UserError → `error: <message>`, exit status 2
def main(cfg: DictConfig) -> None:
    path = Path(cfg.text) if cfg.text else SHIPPED_SHAKESPEARE
    if not path.is_file():
        raise MissingFile(f"text={cfg.text!r}: no such file")
    source = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    report = vocab_report(
        path.read_text(encoding="utf-8"), cfg.vocab_sizes, cfg.out, cfg.pattern, source=str(source)
    )
    print(f"vocabulary report written to {report}")


if __name__ == "__main__":
    main()
