"""`gptlab-analyze` / `python analyze.py run_dir=...`: find the run's data and checkpoint, write its report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from gptlab.analysis.curves import find_runs
from gptlab.analysis.report import ReportOptions, write_report
from gptlab.data import GPTDataModule
from gptlab.data.build import build_datamodule
from gptlab.entrypoints.config import hydra_entry, to_plain
from gptlab.errors import MissingFile, UserError


def run_datamodule(run_dir: Path, data_dir: str | None) -> GPTDataModule:
    """The run's validation/training data, prepared again from its config if it is not on disk.

    data_dir names a folder of prepared bins to read as they are (a run trained on another machine
    or from another working directory); otherwise the run's data is prepared again from its
    data.path into paths.data_dir, which is a no-op when an identical prepare is already there.
    """
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise MissingFile(f"{path} not found: analyze.py needs the run's resolved config to find its data")
    cfg = OmegaConf.load(path)
    dm = build_datamodule(cfg)
    if data_dir:
        dm.data_dir = Path(data_dir)
        dm.setup()
        return dm
    try:
        dm.prepare_data()
    except FileNotFoundError as e:
        raise MissingFile(
            f"{e}: cannot rebuild the data of {run_dir} (data.path={cfg.data.path}); give data_dir=<folder of "
            f"prepared bins> or point data.path at the text in {path}"
        ) from None
    dm.setup()
    return dm


def run_analyze(cfg: DictConfig) -> Path:
    """Write <run_dir>/report/ (report.md and PNGs); returns the report folder."""
    if not cfg.run_dir:
        raise UserError("give run_dir=outputs/<run_name>/<time> (a run folder written by train.py, or a multirun folder)")
    runs = find_runs(cfg.run_dir)
    main, compare = runs[0], [*runs[1:], *(cfg.compare or [])]  # a multirun folder: its first job vs the rest
    cache: dict[str, np.ndarray] = {}
    modules: dict[Path, GPTDataModule] = {}

    def val_ids_for(run_dir: Path) -> np.ndarray:
        if run_dir not in modules:
            modules[run_dir] = run_datamodule(run_dir, cfg.data_dir)
        key = str(modules[run_dir].data_dir)
        cache.setdefault(key, np.asarray(modules[run_dir].val_ids))
        return cache[key]

    val_ids_for(main)
    dm = modules[main]
    from gptlab.tokenizers import tokenizer_from_spec

    tok = tokenizer_from_spec(dm.meta["tokenizer"])
    train_text = tok.decode(np.asarray(dm.train_ids[: cfg.known_words_tokens]).tolist())
    options = ReportOptions(
        labels=to_plain(cfg.labels), train_text=train_text, prompt=cfg.prompt, max_new_tokens=cfg.max_new_tokens,
        temperatures=list(cfg.temperatures), strategies=to_plain(cfg.strategies), attention_layer=cfg.attention.layer,
        attention_head=cfg.attention.head, neighbour_queries=cfg.neighbour_queries,
        position_windows=cfg.position_windows, log_scale=cfg.log_scale, seed=cfg.seed,
    )
    out = write_report(main, val_ids_for, compare=compare, out_dir=cfg.out_dir or (Path(cfg.run_dir) / "report"),
                       ckpt=cfg.ckpt, options=options)
    print(f"[gptlab] report written to {out / 'report.md'}")
    return out


@hydra_entry("analyze", free_text=("prompt",))  # prompt=... as typed
def main(cfg: DictConfig) -> None:
    run_analyze(cfg)
