"""Loss and learning-rate curves of one or several runs, read from their CSV (or TensorBoard) logs.

A run folder is what train.py writes: config.yaml, logs/metrics.csv (CSVLogger) or
tensorboard/ (TensorBoardLogger). `find_runs` also accepts a folder holding runs, such as a
Hydra multirun folder (0/, 1/, ...) or outputs/<run_name>/ with one folder per launch.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from gptlab.analysis import save_figure
from gptlab.errors import MissingFile, UserError

TRAIN, VAL, LR = "train/loss", "val/loss", "lr"
# LearningRateMonitor names the column after the scheduler and the parameter group; both AdamW
# groups share one LR, so the decayed group's column stands for the schedule (older runs: "lr").
LR_COLUMNS = (LR, "lr/decay")


@dataclass
class Series:
    """One logged metric: values at strictly increasing optimizer steps."""

    steps: np.ndarray
    values: np.ndarray


@dataclass
class RunLog:
    path: Path
    label: str
    metrics: dict[str, Series]
    tokens_per_step: int | None  # batch × block × accumulation × devices; None if config.yaml is missing
    config: dict = field(default_factory=dict)


def _is_run(path: Path) -> bool:
    """train.py's run folder: its config.yaml beside logs or checkpoints (not Hydra's .hydra/config.yaml)."""
    return (path / "config.yaml").is_file() and any((path / d).is_dir() for d in ("logs", "checkpoints", "tensorboard"))


def find_runs(path: str | Path) -> list[Path]:
    """The run folders at or under `path` (a run, a multirun folder, or a run_name folder), in order."""
    path = Path(path)
    if not path.is_dir():
        raise MissingFile(f"run folder {path} not found")
    if _is_run(path):
        return [path]

    def order(p: Path):  # multirun jobs 0, 1, ..., 10 in numeric order; launches by name (= time)
        rel = p.relative_to(path).parts
        return [(0, int(x), "") if x.isdigit() else (1, 0, x) for x in rel]

    runs = sorted({p.parent for p in path.rglob("config.yaml") if _is_run(p.parent)}, key=order)
    if not runs:
        raise MissingFile(
            f"{path} holds no run: expected config.yaml with logs/ or checkpoints/ in it or in a folder below it"
        )
    return runs


def _monotone(steps: list[int], values: list[float]) -> Series:
    """Sort by step and keep the last value logged at each step (a resumed run logs some steps twice)."""
    last: dict[int, float] = {}
    for s, v in zip(steps, values):
        last[s] = v
    keys = sorted(last)
    return Series(np.array(keys, dtype=np.int64), np.array([last[k] for k in keys], dtype=np.float64))


def read_csv_metrics(path: str | Path) -> dict[str, Series]:
    """Every metric column of a Lightning CSVLogger metrics.csv, keyed by column name."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise UserError(f"{path}: not a Lightning metrics.csv (no 'step' column; columns {reader.fieldnames})")
        raw: dict[str, tuple[list[int], list[float]]] = {}
        for row in reader:
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                steps, values = raw.setdefault(key, ([], []))
                steps.append(int(float(row["step"])))
                values.append(float(value))
    return {key: _monotone(*sv) for key, sv in raw.items()}


def read_tensorboard_metrics(folder: str | Path) -> dict[str, Series]:
    """Every scalar of the TensorBoard event files under `folder`, keyed by tag."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise ImportError(f"reading TensorBoard logs in {folder} needs the tensorboard package: "
                          f"pip install tensorboard (or log with logger=csv)") from None
    raw: dict[str, tuple[list[int], list[float]]] = {}
    for events in sorted(Path(folder).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})  # 0: keep every point
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            steps, values = raw.setdefault(tag, ([], []))
            for e in acc.Scalars(tag):
                steps.append(e.step)
                values.append(e.value)
    return {tag: _monotone(*sv) for tag, sv in raw.items()}


def read_metrics(run_dir: str | Path) -> dict[str, Series]:
    """The run's logged metrics: logs/metrics.csv when present, else its TensorBoard events."""
    run_dir = Path(run_dir)
    csv_path = run_dir / "logs" / "metrics.csv"
    if csv_path.is_file():
        metrics = read_csv_metrics(csv_path)
    elif any(run_dir.rglob("events.out.tfevents.*")):
        metrics = read_tensorboard_metrics(run_dir)
    else:
        raise MissingFile(f"{run_dir}: no logs/metrics.csv and no TensorBoard events (events.out.tfevents.*)")
    lr = next((metrics[c] for c in LR_COLUMNS if c in metrics), None)
    if lr is not None:
        metrics[LR] = lr
    return metrics


def tokens_per_step(config: dict) -> int | None:
    """Tokens one optimizer step consumes, from the run's resolved config (None if it cannot tell)."""
    try:
        devices = config["trainer"].get("devices", 1)
        nodes = config["trainer"].get("num_nodes", 1)
        n = (config["data"]["batch_size"] * config["model"]["block_size"]
             * config["trainer"].get("accumulate_grad_batches", 1))
    except (KeyError, TypeError, AttributeError):
        return None
    if not isinstance(devices, int) or not isinstance(nodes, int):  # "auto", [0, 1], ...: unknown here
        return None
    return n * devices * nodes


# Config keys that say where or how verbosely a run was written, not what was trained.
# module.* repeats top-level settings (objective, optim, ...) by interpolation: labelled once, under their own name
_NOT_LABELS = ("run_name", "sample_after_training", "resume", "ckpt_path", "paths.", "logger.", "callbacks.",
               "trainer.enable_", "trainer.default_root_dir", "module.")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    return {k: v for key, sub in d.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}


def _labels(configs: list[dict], run_dirs: list[Path]) -> list[str]:
    """Each run's settings that differ between the runs (e.g. "model.causal=False"), else its folder."""
    flat = [_flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f if not k.startswith(_NOT_LABELS)})
    differ = [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]
    labels = [" ".join(f"{k}={f.get(k)}" for k in differ if k in f) for f in flat]
    return [lab or (r.name if len(run_dirs) == 1 else f"{r.parent.name}/{r.name}") for lab, r in zip(labels, run_dirs)]


def load_runs(paths: list[str | Path], labels: list[str] | None = None) -> list[RunLog]:
    """Every run at or under each path. Labels default to the config values that tell the runs apart."""
    run_dirs = [r for p in paths for r in find_runs(p)]
    if labels is not None and len(labels) != len(run_dirs):
        raise UserError(f"labels: {len(labels)} given for {len(run_dirs)} runs ({[str(r) for r in run_dirs]})")
    configs = [OmegaConf.to_container(OmegaConf.load(r / "config.yaml")) for r in run_dirs]
    labels = labels or _labels(configs, run_dirs)
    return [RunLog(r, label, read_metrics(r), tokens_per_step(c), c) for r, label, c in zip(run_dirs, labels, configs)]


def steps_done(series: Series) -> np.ndarray:
    """Optimizer steps completed at each point. Lightning logs with step = global_step before the
    update (train) or one less than the steps done (validation), so both are the logged step + 1."""
    return series.steps + 1


def ema(series: Series, smoothing: float) -> np.ndarray:
    """Bias-corrected exponential moving average with `smoothing` per optimizer step.

    Rows logged every k steps decay by smoothing**k between rows, so the line's memory is the same
    whatever trainer.log_every_n_steps is; it starts from 0 and divides by the weight gathered so far
    (as Adam's moment estimates do), so the first rows do not drag it up towards the initial loss."""
    out = np.empty_like(series.values)
    acc = weight = 0.0
    gaps = np.diff(series.steps, prepend=series.steps[0] - 1)
    for i, (v, gap) in enumerate(zip(series.values, gaps)):
        decay = smoothing ** max(int(gap), 1)
        acc, weight = decay * acc + (1 - decay) * v, decay * weight + (1 - decay)
        out[i] = acc / weight
    return out


def log_interval(series: Series) -> int | None:
    """The optimizer steps between logged rows (the most common gap), None with fewer than two rows."""
    if len(series.steps) < 2:
        return None
    gaps, counts = np.unique(np.diff(series.steps), return_counts=True)
    return int(gaps[counts.argmax()])


def plot_curves(runs: list[RunLog], path: str | Path, log_scale: bool = False, smoothing: float = 0.9) -> Path:
    """Train/val loss against optimizer steps (left) and tokens seen (right), the LR schedule beneath.

    Raw train loss is drawn faint with a bias-corrected exponential moving average over it (`smoothing`
    per optimizer step); validation
    points are joined by dashed lines. log_scale puts both axes on log scales (power-law view).
    """
    with_tokens = all(r.tokens_per_step for r in runs)
    ncols = 2 if with_tokens else 1
    fig, axes = plt.subplots(2, ncols, figsize=(7 * ncols, 6.5), sharex="col", squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col in range(ncols):
        loss_ax, lr_ax = axes[0, col], axes[1, col]
        for i, run in enumerate(runs):
            c = colors[i % len(colors)]
            scale = run.tokens_per_step if col == 1 else 1
            if TRAIN in run.metrics:
                s = run.metrics[TRAIN]
                x = steps_done(s) * scale
                loss_ax.plot(x, s.values, color=c, alpha=0.25, linewidth=0.7)
                loss_ax.plot(x, ema(s, smoothing), color=c, linewidth=1.5)
            if VAL in run.metrics:
                s = run.metrics[VAL]
                loss_ax.plot(steps_done(s) * scale, s.values, "o--", color=c, markersize=4, linewidth=1.2)
            if len(runs) > 1:
                loss_ax.plot([], [], color=c, linewidth=4, label=run.label)  # one legend entry per run
            if LR in run.metrics:
                s = run.metrics[LR]
                lr_ax.plot(steps_done(s) * scale, s.values, color=c, linewidth=1.3)
        loss_ax.set_ylabel("cross-entropy loss (nats/token)")
        loss_ax.grid(True, alpha=0.3)
        lr_ax.set_ylabel("learning rate")
        lr_ax.grid(True, alpha=0.3)
        lr_ax.set_xlabel("tokens seen" if col == 1 else "optimizer steps")
        loss_ax.set_title(f"Loss vs {'tokens seen' if col == 1 else 'optimizer steps'}")
        if log_scale:
            loss_ax.set_xscale("log")
            loss_ax.set_yscale("log")
            lr_ax.set_yscale("log")
        else:
            lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        loss_ax.plot([], [], "k-", label="train (moving average of the logged loss)")
        loss_ax.plot([], [], "ko--", markersize=4, label="validation")
        loss_ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_metric(runs: list[RunLog], key: str, path: str | Path, ylabel: str, title: str) -> Path | None:
    """One metric (e.g. val/masked_acc) of every run that logged it, against optimizer steps."""
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = False
    for i, run in enumerate(runs):  # colour by position, as in plot_curves
        if key in run.metrics:
            s = run.metrics[key]
            ax.plot(steps_done(s), s.values, "o-", color=colors[i % len(colors)], markersize=4, label=run.label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="optimizer steps", ylabel=ylabel, title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def summary_rows(runs: list[RunLog], last_steps: int = 100) -> list[dict[str, str]]:
    """Per run: steps, tokens, train loss (mean of the rows logged in the last `last_steps` optimizer
    steps), best and last val loss."""
    rows, name = [], f"train loss (last {last_steps} steps)"
    for run in runs:
        tr, va = run.metrics.get(TRAIN), run.metrics.get(VAL)
        steps = int(steps_done(tr)[-1]) if tr is not None else (int(steps_done(va)[-1]) if va is not None else 0)
        recent = tr.values[steps_done(tr) > steps - last_steps] if tr is not None else None
        row = {"run": run.label, "steps": f"{steps:,}",
               "tokens": f"{steps * run.tokens_per_step:,}" if run.tokens_per_step else "?",
               name: f"{recent.mean():.4f}" if recent is not None else "-",
               "best val loss": f"{va.values.min():.4f} (step {int(steps_done(va)[va.values.argmin()])})" if va is not None else "-",
               "last val loss": f"{va.values[-1]:.4f}" if va is not None else "-"}
        if tr is not None and not math.isfinite(float(tr.values[-1])):
            row[name] += " (diverged)"
        rows.append(row)
    return rows
