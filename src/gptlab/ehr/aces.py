"""Task labels from ACES configs (https://github.com/justin13601/ACES, PyPI `es-aces`).

A task file in src/gptlab/conf_ehr_eval/task/ holds its ACES definition under `aces:` (predicates, trigger, windows: the
ACES config language, unchanged) next to what trajectory sampling needs (outcome/stop tokens,
horizon). `extract_labels` runs ACES over every shard of a MEDS dataset and returns a MEDS label
table; `compare_labels` counts how two label tables differ (e.g. ACES vs a shipped label file).

ACES labels a window by "some event of a predicate happened in it"; an outcome that is the absence of
an event (a stay longer than 7 days = no discharge within 7 days) is written as that event's task
with `negate: true` next to `aces:`, and the label is flipped after extraction.

    python -m gptlab.ehr.aces src/gptlab/conf_ehr_eval/task/icu_mortality.yaml data/mimic-iv-demo-meds labels.parquet \
        --compare "data/mimic-iv-demo-meds/tasks/ICU Mortality first 24h.parquet"
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from gptlab.ehr.meds import validate_labels

TASK_KEYS = ("predicates", "trigger", "windows")


def read_task(task: dict[str, Any] | str | Path) -> dict[str, Any]:
    """A task as a dict: given one, or read from its YAML file."""
    if isinstance(task, dict):
        return task
    path = Path(task)
    if not path.exists():
        raise FileNotFoundError(f"task config not found: {path}")
    return yaml.safe_load(path.read_text()) or {}


def aces_definition(task: dict[str, Any] | str | Path) -> dict[str, Any]:
    """The ACES config of a task: a gptlab task dict/file (its `aces:` block) or a plain ACES file."""
    source, task = task, read_task(task)
    definition = task.get("aces", task)
    missing = [k for k in TASK_KEYS if k not in (definition or {})]
    if missing:
        raise ValueError(f"{source if not isinstance(source, dict) else 'task config'}: no ACES definition: "
                         f"missing {missing} (an ACES config, or a gptlab task with an `aces:` block, needs "
                         f"{list(TASK_KEYS)})")
    return definition


def load_config(task: dict[str, Any] | str | Path):
    """ACES's own TaskExtractorConfig (its parser and checks) for a task."""
    from aces.config import TaskExtractorConfig

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "task.yaml"
        path.write_text(yaml.safe_dump(aces_definition(task), sort_keys=False))
        return TaskExtractorConfig.load(config_path=path)


def shard_files(meds_dir: str | Path) -> list[Path]:
    files = sorted((Path(meds_dir) / "data").rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{meds_dir}: no MEDS shards under data/ (expected data/<split>/*.parquet)")
    return files


def extract_labels(task: dict[str, Any] | str | Path, meds_dir: str | Path, negate: bool | None = None) -> pa.Table:
    """Run ACES on each shard and return one MEDS label table (subject_id, prediction_time,
    boolean_value), sorted by subject and time. `negate` defaults to the task's `negate` key."""
    import polars as pl
    from aces import predicates, query
    from omegaconf import DictConfig

    task = read_task(task)
    if negate is None:
        negate = bool(task.get("negate", False))
    frames = []
    logging.getLogger("aces").setLevel(logging.ERROR)  # its per-shard "all labels the same" warnings: one split of a small cohort often is
    for shard in shard_files(meds_dir):
        cfg = load_config(task)  # fresh per shard: ACES's query shifts the window tree it is given
        preds = predicates.get_predicates_df(cfg, DictConfig({"path": str(shard), "standard": "meds"}))
        result = query.query(cfg, preds)
        if len(result):
            frames.append(result.select(pl.col("subject_id").cast(pl.Int64),
                                        pl.col("index_timestamp").cast(pl.Datetime("us")).alias("prediction_time"),
                                        (pl.col("label") > 0).alias("boolean_value")))
    if not frames:
        return validate_labels(pa.table({"subject_id": pa.array([], pa.int64()),
                                          "prediction_time": pa.array([], pa.timestamp("us")),
                                          "boolean_value": pa.array([], pa.bool_())}), "ACES result")
    table = pl.concat(frames).sort("subject_id", "prediction_time").to_arrow()
    if negate:
        table = table.set_column(2, "boolean_value", pc.invert(table["boolean_value"]))
    return validate_labels(table, "ACES result")


def task_labels(task: dict[str, Any], meds_dir: str | Path) -> pa.Table:
    """The labels ehr_eval scores: extracted with ACES when the task says `aces_labels: true`, else its
    `labels` file (relative to the MEDS folder)."""
    if task.get("aces_labels"):
        return extract_labels(task, meds_dir)
    if not task.get("labels"):
        raise ValueError(f"task {task.get('name')!r}: no `labels` file and `aces_labels` is false: set one")
    from gptlab.ehr.meds import read_labels

    return read_labels(Path(meds_dir) / task["labels"])


def complement_risks(task: dict[str, Any], preds: list[dict[str, Any]]) -> None:
    """For a task whose sampled outcome is the opposite of its label (`complement: true`, e.g. a long
    stay = no discharge within the horizon), turn every risk column into 1 - risk, in place."""
    if task.get("complement"):
        for p in preds:
            for key in [k for k in p if k.startswith("risk_") and k != "risk_oracle"]:
                p[key] = 1.0 - p[key]


def compare_labels(ours: pa.Table, reference: pa.Table) -> dict[str, int]:
    """Counts of (subject_id, prediction_time) rows in both / only one table, and label disagreements."""
    def keyed(t: pa.Table) -> dict[tuple[int, np.datetime64], bool]:
        times = t["prediction_time"].to_numpy().astype("datetime64[us]")
        return dict(zip(zip(t["subject_id"].to_pylist(), times), t["boolean_value"].to_pylist()))

    a, b = keyed(ours), keyed(reference)
    both = a.keys() & b.keys()
    return {"rows": len(a), "reference_rows": len(b), "both": len(both), "only_ours": len(a.keys() - b.keys()),
            "only_reference": len(b.keys() - a.keys()), "label_differs": sum(a[k] != b[k] for k in both),
            "positives": sum(a.values()), "reference_positives": sum(b.values())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Extract MEDS task labels with ACES")
    ap.add_argument("task", help="gptlab task yaml (with an `aces:` block) or a plain ACES config")
    ap.add_argument("meds_dir")
    ap.add_argument("out", help="label parquet to write (MEDS label schema)")
    ap.add_argument("--compare", help="a reference label parquet to count differences against")
    ap.add_argument("--write-config", help="also write the plain ACES config here (for aces-cli)")
    args = ap.parse_args(argv)
    task = read_task(args.task)
    labels = extract_labels(task, args.meds_dir)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(labels, args.out)
    print(f"{args.out}: {labels.num_rows} labels, {pc.sum(labels['boolean_value']).as_py() or 0} positive")
    if args.write_config:
        Path(args.write_config).write_text(yaml.safe_dump(aces_definition(task), sort_keys=False))
    if args.compare:
        from gptlab.ehr.meds import read_labels

        print(compare_labels(labels, read_labels(args.compare)))


if __name__ == "__main__":
    main()
