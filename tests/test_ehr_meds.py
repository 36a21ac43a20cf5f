"""The MEDS ecosystem around the EHR path: `meds` schemas on input, ACES task labels, meds-evaluation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from gptlab import conf_ehr_eval
from gptlab.ehr import metrics as M
from gptlab.ehr.aces import compare_labels, complement_risks, extract_labels, load_config, task_labels
from gptlab.ehr.meds import Problems, read_labels, read_split, validate_labels
from gptlab.ehr.meds_eval import NOT_RUN, evaluate, prediction_table, write_and_evaluate
from tests.conftest import ROOT, SHARED_DATA

pytest.importorskip("aces")
pytest.importorskip("meds_evaluation")

TASK_DIR = Path(conf_ehr_eval.__file__).parent / "task"
MIMIC = next((p for p in (ROOT / "data" / "mimic-iv-demo-meds", SHARED_DATA / "mimic-iv-demo-meds")
              if (p / "data").is_dir()), SHARED_DATA / "mimic-iv-demo-meds")


def task(name: str) -> dict:
    return yaml.safe_load((TASK_DIR / f"{name}.yaml").read_text())


def write_meds(folder: Path, rows: list[tuple], split: str = "train") -> Path:
    """rows: (subject_id, time or None, code, value); every split gets a file (ACES reads all shards)."""
    for s in ("train", "tuning", "held_out"):
        mine = rows if s == split else []
        (folder / "data" / s).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({
            "subject_id": pa.array([r[0] for r in mine], pa.int64()),
            "time": pa.array([None if r[1] is None else np.datetime64(r[1], "us") for r in mine], pa.timestamp("us")),
            "code": pa.array([r[2] for r in mine], pa.string()),
            "numeric_value": pa.array([r[3] for r in mine], pa.float32())}), folder / "data" / s / "0.parquet")
    return folder


# ---- input validated by the `meds` package's schemas -----------------------------------------------
def test_meds_schema_refuses_a_time_column_it_cannot_cast_naming_the_file(tmp_path):
    path = tmp_path / "data" / "train" / "0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"subject_id": [1], "time": ["yesterday"], "code": ["A"], "numeric_value": [1.0]}), path)
    with pytest.raises(ValueError, match=r"0\.parquet: not a valid MEDS table \(DataSchema of meds"):
        read_split(tmp_path, "train", Problems())


def test_numeric_value_may_be_absent_as_meds_allows(tmp_path):
    path = tmp_path / "data" / "train" / "0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"subject_id": pa.array([1, 1], pa.int32()), "time": pa.array(
        [None, np.datetime64("2000-01-01", "ns")], pa.timestamp("ns")), "code": ["GENDER//F", "A"]}), path)
    t = read_split(tmp_path, "train", Problems())
    assert t.schema.field("subject_id").type == pa.int64() and t.schema.field("time").type == pa.timestamp("us")
    assert t["numeric_value"].null_count == 2 and t.schema.field("numeric_value").type == pa.float64()


def test_labels_are_aligned_to_the_meds_label_schema_and_nulls_are_counted(tmp_path):
    t = validate_labels(pa.table({"subject_id": pa.array([1], pa.int32()), "prediction_time": pa.array(
        [np.datetime64("2000-01-01", "ns")]), "boolean_value": [True]}), "x")
    assert t.schema.field("subject_id").type == pa.int64() and t.schema.field("prediction_time").type == pa.timestamp("us")
    pq.write_table(pa.table({"subject_id": [1, 2], "prediction_time": pa.array([np.datetime64("2000-01-01", "us")] * 2),
                             "boolean_value": [True, None]}), tmp_path / "l.parquet")
    with pytest.raises(ValueError, match=r"l\.parquet: 1 row\(s\) with a null 'boolean_value'"):
        read_labels(tmp_path / "l.parquet")


# ---- ACES task configs --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["icu_mortality", "in_hospital_mortality", "readmission_30d", "long_los",
                                  "synthetic_death", "synthetic_readmission"])
def test_every_shipped_task_is_a_valid_aces_config(name):
    cfg = load_config(task(name))  # ACES's own parser: predicates, trigger and window tree
    assert cfg.label_window is not None and cfg.index_timestamp_window == "input"


def test_aces_reproduces_the_synthetic_generators_labels_across_shards(tmp_path):
    from gptlab.ehr.synthetic import generate_cohort

    meds = generate_cohort(tmp_path / "cohort", n_patients=40, seed=3)  # 3 shards: train/tuning/held_out
    ours = extract_labels(task("synthetic_death"), meds)
    diff = compare_labels(ours, read_labels(meds / "tasks" / "death_365d.parquet"))
    assert diff["rows"] == diff["reference_rows"] == diff["both"] > 40
    assert diff["label_differs"] == 0 and diff["positives"] > 0


@pytest.mark.parametrize("name", ["synthetic_death", "synthetic_readmission"])
def test_aces_reproduces_both_lifelong_label_files(tmp_path, name):
    from gptlab.ehr.synthetic import generate_cohort

    meds = generate_cohort(tmp_path / "cohort", n_patients=40, seed=3, shape="lifelong")
    diff = compare_labels(extract_labels(task(name), meds), read_labels(meds / task(name)["labels"]))
    assert diff["rows"] == diff["reference_rows"] == diff["both"] > 40
    assert diff["label_differs"] == 0 and 0 < diff["positives"] < diff["rows"]


def test_long_stay_is_the_negated_aces_label(tmp_path):
    adm, dis = "HOSPITAL_ADMISSION//EW EMER.", "HOSPITAL_DISCHARGE//HOME"
    meds = write_meds(tmp_path, [
        (1, "2100-01-01T10:00", adm, None), (1, "2100-01-04T10:00", dis, None),   # 3 days: not long
        (2, "2100-01-01T10:00", adm, None), (2, "2100-01-11T10:00", dis, None),   # 10 days: long
        (3, "2100-01-01T10:00", adm, None), (3, "2100-01-01T20:00", dis, None)])  # ends before the prediction time
    t = task_labels(task("long_los"), meds)
    got = dict(zip(t["subject_id"].to_pylist(), t["boolean_value"].to_pylist()))
    assert got == {1: False, 2: True}
    assert extract_labels(TASK_DIR / "long_los.yaml", meds).equals(t)  # a task file negates as its dict does
    assert t["prediction_time"].to_pylist()[0] == np.datetime64("2100-01-02T10:00", "us").astype(object)


def test_complement_flips_model_risks_not_the_oracle():
    preds = [{"risk_trajectory": 0.2, "risk_one_step": 0.9, "risk_oracle": 0.3, "label": True}]
    complement_risks({"complement": True}, preds)
    assert preds[0]["risk_trajectory"] == pytest.approx(0.8) and preds[0]["risk_one_step"] == pytest.approx(0.1)
    assert preds[0]["risk_oracle"] == 0.3


@pytest.mark.slow
@pytest.mark.skipif(not (MIMIC / "data").is_dir(), reason="MIMIC-IV demo not found (make ehr-data)")
def test_aces_icu_mortality_equals_the_label_file_the_demo_ships():
    diff = compare_labels(extract_labels(task("icu_mortality"), MIMIC),
                          read_labels(MIMIC / "tasks" / "ICU Mortality first 24h.parquet"))
    assert diff == {"rows": 74, "reference_rows": 74, "both": 74, "only_ours": 0, "only_reference": 0,
                    "label_differs": 0, "positives": 9, "reference_positives": 9}


# ---- meds-evaluation ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_our_auroc_and_auprc_equal_meds_evaluations(seed):
    rng = np.random.default_rng(seed)
    n = 400
    y = rng.random(n) < 0.15
    score = np.round(rng.random(n) * 0.6 + 0.25 * y, 2)  # rounded: many ties
    times = np.datetime64("2100-01-01", "us") + np.arange(n) * np.timedelta64(3600, "s")
    table = prediction_table(rng.integers(0, 90, n), times, y, score)
    res = evaluate(table, seed=seed)
    theirs = res["meds_evaluation"]["samples_equally_weighted"]
    s32 = score.astype(np.float32).astype(np.float64)  # the schema stores float32
    assert M.auroc(y, s32) == pytest.approx(theirs["roc_auc_score"], abs=1e-12)
    assert M.auprc(y, s32) == pytest.approx(theirs["average_precision_score"], abs=1e-12)
    assert res["max_abs_difference"] < 1e-12 and "subjects_equally_weighted" in res["meds_evaluation"]


def test_report_predictions_are_written_in_the_meds_evaluation_schema(tmp_path):
    from meds_evaluation.schema import PredictionSchema

    preds = [{"subject_id": i % 5, "prediction_time": f"2100-01-0{1 + i % 9}T00:00:00", "label": i % 3 == 0,
              "risk_trajectory": i / 10, "risk_one_step": 0.5} for i in range(10)]
    out = write_and_evaluate(tmp_path, preds, {"trajectory": "risk_trajectory", "one_step": "risk_one_step",
                                               "oracle": "risk_oracle"})
    assert set(out) == {"trajectory", "one_step"}  # no oracle column in these predictions
    table = pq.read_table(tmp_path / "meds_predictions_trajectory.parquet")
    PredictionSchema.validate(table)
    assert table["predicted_boolean_probability"].to_pylist()[3] == pytest.approx(0.3)
    assert out["one_step"]["gptlab"]["auroc"] == 0.5 == out["one_step"]["meds_evaluation"][
        "samples_equally_weighted"]["roc_auc_score"]


def test_without_meds_evaluation_the_report_says_so_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "meds_evaluation", None)  # `import meds_evaluation` now raises ImportError
    preds = [{"subject_id": i, "prediction_time": "2100-01-01T00:00:00", "label": i % 2 == 0, "risk_trajectory": i / 4}
             for i in range(4)]
    out = write_and_evaluate(tmp_path, preds, {"trajectory": "risk_trajectory"})
    assert list(out) == [NOT_RUN] and "predictions=" in out[NOT_RUN]
    assert not list(tmp_path.iterdir())


# ---- the experiment scripts' data plumbing (their model runs are in experiments/ehr/README.md) ------
def _script(rel: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(rel).stem, ROOT / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["synthetic_death", "synthetic_readmission"])
def test_peer_task_config_labels_as_ours_with_the_prediction_node_above_the_label_window(tmp_path, name):
    from gptlab.ehr.synthetic import generate_cohort

    peer = _script("experiments/ehr/peer/run_peer.py")
    peer.peer_task_config(task(name), tmp_path / "peer.yaml")
    cfg = load_config(tmp_path / "peer.yaml")
    nodes = {n.node_name: n for n in cfg.window_tree.descendants}
    assert "trigger" in [a.node_name for a in nodes["gap.end"].ancestors]  # ZSACES_label's requirement
    assert "gap.end" in [a.node_name for a in nodes["target.end"].ancestors]
    meds = generate_cohort(tmp_path / "cohort", n_patients=30, seed=4, shape="lifelong")
    diff = compare_labels(extract_labels(tmp_path / "peer.yaml", meds), read_labels(meds / task(name)["labels"]))
    assert diff["both"] == diff["rows"] == diff["reference_rows"] and diff["label_differs"] == 0


def test_cv_folds_partition_the_patients_and_each_fold_is_a_valid_meds_copy(tmp_path):
    from gptlab.ehr.meds import read_dataset
    from gptlab.ehr.synthetic import generate_cohort

    cv = _script("experiments/ehr/mimic_demo/cv.py")
    meds = generate_cohort(tmp_path / "cohort", n_patients=30, seed=5)
    subjects = np.arange(100001, 100031)
    folds = cv.folds_of(subjects, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == subjects.tolist() and [len(f) for f in folds] == [10, 10, 10]
    cv.write_fold(meds, tmp_path / "fold1", folds[1], seed=1)
    tables = read_dataset(tmp_path / "fold1", Problems())
    held = set(tables["held_out"]["subject_id"].to_pylist())
    assert held == set(folds[1].tolist())
    assert held.isdisjoint(tables["train"]["subject_id"].to_pylist() + tables["tuning"]["subject_id"].to_pylist())
    assert len(set(tables["tuning"]["subject_id"].to_pylist())) == 2  # a tenth of the 20 others


def test_peer_script_generates_once_for_all_tasks_and_pairs_only_the_same_labels(tmp_path):
    import argparse
    import csv

    from gptlab.ehr.synthetic import generate_cohort

    peer = _script("experiments/ehr/peer/run_peer.py")
    meds = generate_cohort(tmp_path / "cohort", n_patients=30, seed=4, shape="lifelong")
    tasks = {n: task(n) for n in ("synthetic_death", "synthetic_readmission")}
    times = peer.generation_times(meds, tasks, "held_out", None)
    death = read_labels(meds / tasks["synthetic_death"]["labels"])
    assert times.num_rows == death.num_rows and set(times["subject_id"].to_pylist()) == set(death["subject_id"].to_pylist())
    assert peer.generation_times(meds, tasks, "held_out", 5).num_rows == 5  # the same first rows of both tasks

    labels = [k for k in zip(death["subject_id"].to_pylist(), death["prediction_time"].to_pylist(),
                             death["boolean_value"].to_pylist())]
    rng = np.random.default_rng(0)

    def write(path, flip=None):
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["subject_id", "prediction_time", "label", "risk_trajectory", "risk_oracle"])
            for i, (s, t, y) in enumerate(labels):
                w.writerow([s, t, (not y) if i == flip else y, y * 0.3 + rng.random() * 0.7, y * 0.5 + rng.random() * 0.5])
        return path

    ours, theirs = write(tmp_path / "ours.csv"), write(tmp_path / "peer.csv")
    d = peer.paired(theirs, ours, n_boot=50)
    a, b = (peer.summarize(p, 50)["risk_trajectory"]["auroc"] for p in (ours, theirs))
    assert d["n"] == len(labels) and d["difference"] == pytest.approx(a - b) and d["ci"][0] <= d["difference"] <= d["ci"][1]
    results = {"synthetic_death": {"meds_eic_ar": peer.summarize(theirs, 50), "gptlab": peer.summarize(ours, 50),
                                   "gptlab_minus_peer": d}}
    args = argparse.Namespace(tasks=["synthetic_death"], cohort=str(meds), split="held_out", n_trajectories=20,
                              steps=1, batch=1, seq_len=8, gptlab_predictions=[f"synthetic_death={ours}"])
    peer.write_report(tmp_path, args, {"meds_eic_ar": {"score": {"wall_s": 1, "load_start": 0, "load_end": 0}}}, results)
    assert f"gptlab − peer AUROC, paired over patients on {len(labels)} rows: {d['difference']:+.3f}" in (
        tmp_path / "report.md").read_text()
    with pytest.raises(SystemExit, match="disagree on the label of 1 of"):
        peer.paired(theirs, write(tmp_path / "old.csv", flip=2), n_boot=50)
    peer.check_labels(ours, meds / tasks["synthetic_death"]["labels"])  # the label file's own labels pass
    with pytest.raises(SystemExit, match=r"old\.csv: 1 of \d+ rows hold a label other than"):
        peer.check_labels(tmp_path / "old.csv", meds / tasks["synthetic_death"]["labels"])


def test_peer_trajectory_ends_count_censoring_that_zsaces_calls_negative(tmp_path):
    peer = _script("experiments/ehr/peer/run_peer.py")
    t0 = np.datetime64("2030-01-01", "us")
    day = np.timedelta64(1, "D")
    rows = [(1, t0 + 10 * day, "LAB//x"), (1, t0 + 40 * day, "MEDS_DEATH"),   # outcome inside 365 d
            (2, t0 + 400 * day, "LAB//x"),                                       # past the horizon
            (3, t0 + 5 * day, "LAB//x"), (3, t0 + 6 * day, "TIMELINE//END"),     # record ends: censored
            (4, t0 + 20 * day, "LAB//x"),                                        # budget spent: censored
            (5, t0 + 500 * day, "MEDS_DEATH")]                                   # outcome after the horizon
    (tmp_path / "held_out").mkdir()
    pq.write_table(pa.table({"subject_id": [r[0] for r in rows], "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
                             "code": [r[2] for r in rows], "numeric_value": pa.array([None] * len(rows), pa.float32()),
                             "prediction_time": pa.array([t0] * len(rows), pa.timestamp("us"))}),
                   tmp_path / "held_out" / "0.parquet")
    e = peer.trajectory_ends(tmp_path / "held_out", task("synthetic_death"))
    assert e == {"trajectories": 5, "outcome": 0.2, "horizon": 0.4, "record_end_inside_horizon": 0.2,
                 "tokens_spent_before_horizon": 0.2}


def test_peer_script_takes_a_bare_predictions_file_for_one_task_and_names_a_bad_one(tmp_path):
    peer = _script("experiments/ehr/peer/run_peer.py")
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("subject_id\n")
    one = {"synthetic_death": {}}
    assert peer.gptlab_csv(str(csv_path), one) == ("synthetic_death", csv_path)
    with pytest.raises(SystemExit, match="expected TASK=CSV"):
        peer.gptlab_csv(str(csv_path), {**one, "synthetic_readmission": {}})
    with pytest.raises(SystemExit, match="no task config"):
        peer.read_task("no_such_task")
    with pytest.raises(SystemExit, match="needs an `aces:` block"):
        peer.read_task("readmission_30d")  # MIMIC-style: ACES labels, no label file
