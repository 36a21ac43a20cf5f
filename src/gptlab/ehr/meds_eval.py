"""Predictions in the `meds-evaluation` schema and its metrics beside ours (ehr/metrics.py).

`meds-evaluation` (PyPI) is the MEDS ecosystem's scorer: a prediction file is the MEDS label schema
plus `predicted_boolean_probability` (and/or `predicted_boolean_value`), and
`evaluate_binary_classification` reports scikit-learn's AUROC, average precision, Brier score and
calibration error, over all samples and with subjects equally weighted. Our AUROC/AUPRC must equal
its: the check is run on every report (`agreement`) and in tests/test_ehr_meds.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gptlab.ehr import metrics as M

PROBABILITY = "predicted_boolean_probability"
NOT_RUN = "not_run"  # write_and_evaluate's key when meds-evaluation is missing


def prediction_table(subject_id, prediction_time, label, probability) -> pa.Table:
    """One row per prediction in the meds-evaluation PredictionSchema (probability as float32)."""
    from meds_evaluation.schema import PredictionSchema

    table = pa.table({"subject_id": pa.array(np.asarray(subject_id, dtype=np.int64)),
                      "prediction_time": pa.array(np.asarray(prediction_time, dtype="datetime64[us]")),
                      "boolean_value": pa.array(np.asarray(label, dtype=bool)),
                      # meds-evaluation 0.0.6 reads both prediction columns: no thresholded value here
                      "predicted_boolean_value": pa.nulls(len(label), pa.bool_()),
                      PROBABILITY: pa.array(np.asarray(probability, dtype=np.float32))})
    try:
        return PredictionSchema.align(table)
    except Exception as e:
        raise ValueError(f"predictions do not fit meds-evaluation's PredictionSchema: {e}") from None


def evaluate(table: pa.Table, samples_per_subject: int = 4, seed: int = 0) -> dict[str, Any]:
    """meds-evaluation's binary metrics (curves dropped: only the numbers) plus ours on the same float32
    scores, and their largest difference."""
    import polars as pl
    from meds_evaluation.evaluate import evaluate_binary_classification

    y = table["boolean_value"].to_numpy(zero_copy_only=False).astype(bool)
    if y.all() or not y.any():
        return {"skipped": f"all {len(y)} labels are {bool(y[0]) if len(y) else 'absent'}: AUROC is undefined"}
    theirs = evaluate_binary_classification(pl.from_arrow(table), samples_per_subject, seed)
    theirs = {k: {m: float(v) for m, v in d.items() if np.isscalar(v)} for k, d in theirs.items()}
    score = table[PROBABILITY].to_numpy(zero_copy_only=False).astype(np.float64)
    ours = {"auroc": M.auroc(y, score), "auprc": M.auprc(y, score)}
    ref = theirs["samples_equally_weighted"]
    diff = max(abs(ours["auroc"] - ref["roc_auc_score"]), abs(ours["auprc"] - ref["average_precision_score"]))
    return {"meds_evaluation": theirs, "gptlab": ours, "max_abs_difference": diff}


def write_and_evaluate(out_dir: str | Path, preds: list[dict[str, Any]], scorers: dict[str, str],
                       seed: int = 0) -> dict[str, Any]:
    """For each scorer (name → predictions column) write `meds_predictions_<name>.parquet` and return
    meds-evaluation's metrics of it next to ours. Without meds-evaluation installed nothing is
    written and the answer says so: the sampled risks (predictions.csv) must not be lost to a scorer
    missing at the end; `ehr_eval.py predictions=<that predictions.csv>` reports again without sampling."""
    try:
        import meds_evaluation  # noqa: F401
    except ImportError:
        return {NOT_RUN: "meds-evaluation is not installed (pip install 'gptlab[ehr]'); report again with "
                         "`ehr_eval.py predictions=<this folder>/predictions.csv` once it is"}
    out = {}
    for name, key in scorers.items():
        if key not in preds[0]:
            continue
        table = prediction_table([p["subject_id"] for p in preds], [p["prediction_time"] for p in preds],
                                 [p["label"] for p in preds], [p[key] for p in preds])
        pq.write_table(table, Path(out_dir) / f"meds_predictions_{name}.parquet")
        out[name] = evaluate(table, seed=seed)
    return out
