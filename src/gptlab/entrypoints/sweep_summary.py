"""Hydra callbacks for `python train.py -m ...`: one sweep folder, and a closing table of results.

- PinSweepDir resolves the sweep folder once, before the sweeper needs it, for every job.
- MultirunSummary ends the sweep with a table of each run's best val loss. Every training run
  writes `result.json` into its own folder; the table is read back from those files, so it works
  with any launcher (local, joblib, SLURM) and any sweeper (grid, Optuna).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write


def _job_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    return list(OmegaConf.load(path)) if path.exists() else []


def _is_job(p: Path) -> bool:
    """A job folder: Hydra's default numbered subdir, or any subdir (e.g. `hydra.sweep.subdir:
    ${hydra:job.override_dirname}`) holding a job's overrides or result."""
    return p.is_dir() and (p.name.isdigit() or (p / ".hydra").is_dir() or (p / "result.json").exists())


def sweep_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job folder under sweep_dir: its overrides and result.json (None when it failed)."""
    rows = []
    jobs = sorted((p for p in Path(sweep_dir).iterdir() if _is_job(p)),
                  key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    for job_dir in jobs:
        result_file = job_dir / "result.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else None
        job = int(job_dir.name) if job_dir.name.isdigit() else job_dir.name
        rows.append({"job": job, "overrides": _job_overrides(job_dir), "result": result})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Jobs ranked by best val loss; only the overrides that differ between jobs are shown."""
    if not rows:
        return "no runs found"
    common = set.intersection(*(set(r["overrides"]) for r in rows))

    def best(r: dict[str, Any]) -> float:
        value = (r["result"] or {}).get("best_val_loss")
        return math.inf if value is None else value

    lines = [f"{'job':>4}  {'best val':>9}  {'steps':>6}  {'wall s':>7}  overrides"]
    for r in sorted(rows, key=best):
        res = r["result"] or {}
        loss = "failed" if r["result"] is None else ("-" if math.isinf(best(r)) else f"{best(r):.4f}")
        steps = res.get("steps", "-")
        wall = f"{res['wall_seconds']:.0f}" if "wall_seconds" in res else "-"
        varying = " ".join(o for o in r["overrides"] if o not in common) or "(none)"
        lines.append(f"{r['job']:>4}  {loss:>9}  {steps:>6}  {wall:>7}  {varying}")
    return "\n".join(lines)


class PinSweepDir(Callback):
    """Resolve `hydra.sweep.dir` once at the start of a multirun and hand every job that folder.

    The default, outputs/${run_name}/multirun-<time>, names the model through run_name's
    `${hydra:runtime.choices.model}`. Hydra serves that resolver only inside a job, so its sweeper
    could not resolve the folder at all; and each job would resolve it again with its own model,
    scattering a `model=a,b` sweep over several folders. The folder is taken from the sweep's own
    choices (the defaults, for a swept group) and passed to each job as an override, as if the user
    had written `hydra.sweep.dir=...`.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # what Hydra does before each job, once for the sweep
        sweep_dir = str(config.hydra.sweep.dir)
        quoted = "'" + sweep_dir.replace("'", "\\'") + "'"  # Hydra's override grammar: quotes escaped
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = sweep_dir
            overrides = config.hydra.overrides.hydra
            if not any(str(o).startswith("hydra.sweep.dir=") for o in overrides):
                overrides.append(f"hydra.sweep.dir={quoted}")


class MultirunSummary(Callback):
    """Prints (and saves as summary.txt in the sweep folder) the table at the end of a multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        table = format_table(sweep_rows(sweep_dir))
        (sweep_dir / "summary.txt").write_text(table + "\n")
        print(f"[gptlab] sweep summary ({sweep_dir}), best val loss first:\n{table}", flush=True)
