"""`python train.py -m ...` ends with a table of each run's best val loss (a Hydra callback).

Every training run writes `result.json` into its own folder; the table is read back from those
files, so it works with any launcher (local, joblib, SLURM) and any sweeper (grid, Optuna).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def _job_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    return list(OmegaConf.load(path)) if path.exists() else []


def sweep_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job folder under sweep_dir: its overrides and result.json (None when it failed)."""
    rows = []
    for job_dir in sorted((p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit()),
                          key=lambda p: int(p.name)):
        result_file = job_dir / "result.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else None
        rows.append({"job": int(job_dir.name), "overrides": _job_overrides(job_dir), "result": result})
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


class MultirunSummary(Callback):
    """Prints (and saves as summary.txt in the sweep folder) the table at the end of a multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        table = format_table(sweep_rows(sweep_dir))
        (sweep_dir / "summary.txt").write_text(table + "\n")
        print(f"[gptlab] sweep summary ({sweep_dir}), best val loss first:\n{table}", flush=True)
