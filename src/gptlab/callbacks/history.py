"""A resumed run keeps its whole metrics history, in CSV and TensorBoard; nothing logged is deleted.

Lightning's CSVLogger deletes an existing metrics.csv when it starts ("Previous log files in this
directory will be deleted"), so a sweep resumed in place (`-m resume=auto hydra.sweep.dir=...`)
kept only the resumed steps, and a run resumed into a new folder (`ckpt_path=`) started its curves
at the resumed step. Here, when a run resumes from a checkpoint at optimizer step G:

- CSV: logs/metrics.csv starts with the earlier run's rows logged before step G (from the
  checkpoint's run folder, which may be this one), so one file covers every step exactly once.
  Rows at steps ≥ G, which the resumed run logs again, and any metrics.csv already in the folder
  are kept beside it as `metrics.csv.<time>` (set aside, never deleted).
- TensorBoard: the earlier run's event files are copied in when it lived in another folder, and
  the new writer starts with `purge_step=G`, TensorBoard's own marker that hides the earlier
  events at steps ≥ G.
"""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path
from typing import Any

import lightning.pytorch.loggers
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer that continues an existing metrics.csv instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class CSVLogger(lightning.pytorch.loggers.CSVLogger):
    """CSVLogger whose metrics.csv is continued, never deleted (see continue_history)."""

    @property
    @lightning.pytorch.loggers.logger.rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def set_aside(path: Path) -> Path:
    """Rename `path` to `<name>.<time>` (a new name each time); returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{stamp}")
    n = 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.{stamp}-{n}"), n + 1
    return path.rename(target)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def continue_csv(log_dir: Path, earlier_log_dir: Path | None, step: int | None) -> None:
    """Seed log_dir/metrics.csv with the earlier rows at steps < `step` (none when `step` is None:
    a fresh run); any metrics.csv already there is set aside first."""
    target = log_dir / ExperimentWriter.NAME_METRICS_FILE
    source = earlier_log_dir / ExperimentWriter.NAME_METRICS_FILE if earlier_log_dir else None
    rows = read_rows(source) if step is not None and source is not None and source.is_file() else []
    if target.is_file():
        set_aside(target)
    kept = [r for r in rows if r.get("step") not in (None, "") and int(float(r["step"])) < step]
    if not kept:
        return
    keys = sorted({k for r in kept for k, v in r.items() if v not in (None, "")})
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(target, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)


def continue_tensorboard(logger: Any, earlier_log_dir: Path | None, step: int | None) -> None:
    if step is None:
        return
    log_dir = Path(logger.log_dir)
    if earlier_log_dir is not None and earlier_log_dir.resolve() != log_dir.resolve() and earlier_log_dir.is_dir():
        log_dir.mkdir(parents=True, exist_ok=True)
        for events in earlier_log_dir.glob("events.out.tfevents.*"):
            if not (log_dir / events.name).exists():
                shutil.copy2(events, log_dir / events.name)
    logger._kwargs["purge_step"] = step  # passed to SummaryWriter when the logger opens it


@rank_zero_only
def continue_history(loggers: list[Any], run_dir: str | Path, ckpt_path: str | Path | None,
                     step: int | None) -> None:
    """Before fit: prepare every logger's folder so that the run's metrics continue those of the
    checkpoint it resumes (at optimizer step `step`), or start clean when it resumes nothing."""
    run_dir = Path(run_dir)
    earlier_run = Path(ckpt_path).resolve().parent.parent if ckpt_path else None
    for logger in loggers:
        if not getattr(logger, "log_dir", None):
            continue
        log_dir = Path(logger.log_dir)
        try:
            relative = log_dir.resolve().relative_to(run_dir.resolve())
        except ValueError:
            relative = None
        earlier = earlier_run / relative if earlier_run is not None and relative is not None else None
        if isinstance(logger, lightning.pytorch.loggers.CSVLogger):
            continue_csv(log_dir, earlier, step)
        elif isinstance(logger, lightning.pytorch.loggers.TensorBoardLogger):
            continue_tensorboard(logger, earlier, step)
