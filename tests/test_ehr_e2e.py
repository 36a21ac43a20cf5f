"""A tiny synthetic cohort end to end: generate → prepare (train.py's data hook) → train → ehr_eval report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.entrypoints.train import train
from gptlab.tokenizers import tokenizer_from_spec
from tests.conftest import ROOT, SHARED_DATA, compose_train_cfg

TINY = ("model=tiny", "model.block_size=96", "trainer.accelerator=cpu", "trainer.enable_model_summary=false",
        "trainer.enable_progress_bar=false", "sample_after_training=0")


def test_tiny_synthetic_cohort_trains_and_scores(tmp_path, monkeypatch):
    from gptlab.ehr.evaluate import evaluate_task

    cfg = compose_train_cfg(tmp_path / "run", tmp_path / "data", [
        *TINY, "data=synthetic_ehr", "data.synthetic.n_patients=60", "data.tokenizer.min_count=2",
        "trainer.max_steps=12", "eval_interval=6", "data.val_batches=1", "data.batch_size=8", "optim.lr=3e-3"])
    result = train(cfg)
    assert result["steps"] == 12
    prepared = tmp_path / "data" / "synthetic_ehr_adult_n60_seed0"
    meta = json.loads(next(prepared.glob("*/meta.json")).read_text())
    assert meta["train_subjects"] == 42 and meta["tokenizer"]["kind"] == "ehr"
    model, ckpt = load_gpt_from_lightning_ckpt(result["last_ckpt"])
    tok = tokenizer_from_spec(ckpt["tokenizer"])  # the checkpoint rebuilds the EHR tokenizer
    assert model.config.vocab_size == tok.vocab_size == meta["vocab_size"]

    threads = torch.get_num_threads()
    cfg_eval = {
        "ckpt_path": result["last_ckpt"], "meds_dir": None, "splits": ["held_out"], "n_trajectories": 4,
        "max_new_tokens": 24, "temperature": 1.0, "max_labels": 6, "risk_estimator": "km", "n_boot": 50, "seed": 0, "device": "cpu",
        "threads": 1, "out_dir": str(tmp_path / "eval"),
        "task": {"name": "tiny", "labels": "tasks/death_365d.parquet", "oracle": "tasks/death_365d_oracle.parquet",
                 "outcome": ["MEDS_DEATH"], "stop": ["<TL_END>"], "horizon_days": 365}}
    report = evaluate_task(cfg_eval)
    assert {"trajectory", "naive", "complete_case", "km", "one_step", "baseline", "oracle"} <= set(report["metrics"])
    diff = report["trajectory_minus_baseline"]["auroc"]  # paired, on the same patient resamples
    t, b = report["metrics"]["trajectory"]["auroc"], report["metrics"]["baseline"]["auroc"]
    assert diff["difference"] == pytest.approx(t - b) and (np.isnan(diff["ci"][0]) or diff["ci"][0] <= t - b <= diff["ci"][1])
    assert report["baseline"]["train_labels"] > 0 and 0 <= report["censored_fraction"] <= 1
    lo, hi = report["auroc_ratio_to_oracle_ci"]  # the ratio's CI, both AUROCs on each patient resample
    r = report["auroc_ratio_to_oracle"]
    assert r == pytest.approx(t / report["metrics"]["oracle"]["auroc"]) and (np.isnan(lo) or lo <= r <= hi)
    assert "train" in report["problems_by_split"] and "held_out" in report["problems_by_split"]  # per split
    assert torch.get_num_threads() == threads  # threads=1 held only while scoring
    assert sum(report["trajectory_ends"].values()) == 6 * 4
    assert report["metrics"]["trajectory"]["n"] == 6
    assert report["ci"] == "percentile bootstrap over patients" and report["patients"] <= 6
    for f in ("report.md", "report.json", "calibration.png", "predictions.csv"):
        assert (tmp_path / "eval" / f).exists()
    assert report["problems"]["labels_of_subjects_outside_held_out_not_scored"]["count"] > 0  # counted, not hidden

    # labels sampled together (prompts of one length share a batch) come back in the labels' order,
    # each with its own one-step score
    import pandas as pd

    evaluate_task({**cfg_eval, "prompt_batch": 1, "baseline": False, "out_dir": str(tmp_path / "alone")})
    together, alone = (pd.read_csv(tmp_path / d / "predictions.csv") for d in ("eval", "alone"))  # default batch 32
    keys = ["subject_id", "prediction_time", "prompt_tokens"]
    assert together[keys].equals(alone[keys])
    assert np.allclose(together["risk_one_step"], alone["risk_one_step"], rtol=1e-5)

    # predictions=: the same risks reported again, nothing sampled; settings from the earlier report
    import gptlab.ehr.evaluate as E

    def no_sampling(*a, **k):
        raise AssertionError("predictions= must not sample")

    monkeypatch.setattr(E, "trajectory_scores", no_sampling)
    again = evaluate_task({**cfg_eval, "n_trajectories": 99, "predictions": str(tmp_path / "eval" / "predictions.csv"),
                           "out_dir": str(tmp_path / "again")})
    assert again["n_trajectories"] == 4 and again["risks_reused_from"] == [str(tmp_path / "eval" / "predictions.csv")]
    for name in ("trajectory", "km", "naive", "one_step", "baseline", "oracle"):
        assert again["metrics"][name]["auroc"] == pytest.approx(report["metrics"][name]["auroc"]), name
    assert again["trajectory_ends"] == report["trajectory_ends"] and again["tokens_sampled"] == report["tokens_sampled"]
    first = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert pd.read_csv(tmp_path / "again" / "predictions.csv").equals(first)  # same rows, columns and order

    # shard=i/k scores every k-th label; the shards' predictions together make one report
    monkeypatch.undo()  # shards sample for real
    shards = []
    for i in range(2):
        part = evaluate_task({**cfg_eval, "shard": f"{i}/2", "baseline": False, "out_dir": str(tmp_path / f"shard{i}")})
        assert part["metrics"]["trajectory"]["n"] == 3
        shards.append(str(tmp_path / f"shard{i}" / "predictions.csv"))
    assert pd.read_csv(shards[1])["subject_id"].tolist() == first["subject_id"].iloc[1::2].tolist()
    monkeypatch.setattr(E, "trajectory_scores", no_sampling)
    merged = evaluate_task({**cfg_eval, "predictions": shards, "out_dir": str(tmp_path / "merged")})
    assert pd.read_csv(tmp_path / "merged" / "predictions.csv")[["subject_id", "prediction_time"]].equals(
        first[["subject_id", "prediction_time"]])  # the labels' order again
    assert sum(merged["trajectory_ends"].values()) == 6 * 4  # each shard's trajectories counted once
    assert merged["metrics"]["baseline"]["auroc"] == pytest.approx(report["metrics"]["baseline"]["auroc"])
    with pytest.raises(ValueError, match="shard='2/2'"):
        evaluate_task({**cfg_eval, "shard": "2/2", "out_dir": str(tmp_path / "x")})

    # a label missing, or given twice, or with another value: refused, naming the file
    with pytest.raises(ValueError, match="hold 3 of the 6 labels"):
        evaluate_task({**cfg_eval, "predictions": shards[0], "out_dir": str(tmp_path / "x")})
    with pytest.raises(ValueError, match="given before"):
        evaluate_task({**cfg_eval, "predictions": [*shards, shards[0]], "out_dir": str(tmp_path / "x")})
    flipped = first.copy()
    flipped.loc[0, "label"] = not bool(flipped.loc[0, "label"])
    (tmp_path / "flip").mkdir()
    flipped.to_csv(tmp_path / "flip" / "predictions.csv", index=False)
    (tmp_path / "flip" / "report.json").write_text((tmp_path / "eval" / "report.json").read_text())
    with pytest.raises(ValueError, match=r"flip/predictions.csv, line 2: label"):
        evaluate_task({**cfg_eval, "predictions": str(tmp_path / "flip" / "predictions.csv"), "out_dir": str(tmp_path / "x")})

    # sample_missing=true: the labels the files lack (shard 1's) and the one whose value changed are
    # sampled now, the rest reused as they were; a reused row's prompt must still be its label's prompt
    monkeypatch.undo()
    flipped.iloc[0::2].to_csv(tmp_path / "flip" / "predictions.csv", index=False)  # rows 0, 2, 4; row 0 flipped
    extended = evaluate_task({**cfg_eval, "predictions": str(tmp_path / "flip" / "predictions.csv"),
                              "sample_missing": True, "baseline": False, "out_dir": str(tmp_path / "extended")})
    assert extended["labels_sampled_now"] == 4 and extended["metrics"]["trajectory"]["n"] == 6
    again_rows = pd.read_csv(tmp_path / "extended" / "predictions.csv")
    assert again_rows[["subject_id", "prediction_time", "label"]].equals(first[["subject_id", "prediction_time", "label"]])
    assert np.allclose(again_rows["risk_trajectory"].iloc[[2, 4]], first["risk_trajectory"].iloc[[2, 4]])
    moved = first.copy()
    moved.loc[1, "prompt_tokens"] += 1
    moved.to_csv(tmp_path / "flip" / "predictions.csv", index=False)
    with pytest.raises(ValueError, match=r"token prompt; its prompt here has"):
        evaluate_task({**cfg_eval, "predictions": str(tmp_path / "flip" / "predictions.csv"), "out_dir": str(tmp_path / "x")})


# the MIMIC-IV demo: $GPTLAB_MIMIC_DEMO, else `make ehr-data`'s folder, else ../shared/data
MIMIC = next((p for p in (Path(os.environ.get("GPTLAB_MIMIC_DEMO", "/nonexistent")), ROOT / "data" / "mimic-iv-demo-meds",
                          SHARED_DATA / "mimic-iv-demo-meds") if (p / "data").is_dir()), SHARED_DATA / "mimic-iv-demo-meds")


@pytest.mark.slow
@pytest.mark.skipif(not (MIMIC / "data").is_dir(), reason="MIMIC-IV demo not found (make ehr-data)")
def test_mimic_demo_prepares_with_counted_problems(tmp_path):
    from gptlab.ehr.prepare import prepare_meds

    meta = prepare_meds({"path": str(MIMIC), "tokenizer": {"kind": "ehr", "min_count": 5}}, tmp_path)
    assert meta["train_subjects"] == 80 and meta["val_subjects"] == 10 and meta["test_subjects"] == 10
    assert meta["train_tokens"] > 500_000
    tok = tokenizer_from_spec(meta["tokenizer"])
    assert "ICD10//I10" in tok.vocab and "MEDS_DEATH" in tok.vocab and tok.names["ICD10//I10"].startswith("Essential")
    assert tok.names.get("LAB//51237//UNK", "").startswith("INR")  # names from metadata/codes.parquet
    assert any(k.startswith("rare_or_unknown_") for k in meta["problems"])


def test_sharded_eval_script_resumes_and_joins(tmp_path):
    """experiments/ehr/sharded_eval.sh: K shards, then one joined report; run again after a shard was
    lost (a session ended mid-shard), it samples only that shard and joins."""
    import subprocess
    import sys

    import pandas as pd

    cfg = compose_train_cfg(tmp_path / "run", tmp_path / "data", [
        *TINY, "data=synthetic_ehr", "data.synthetic.n_patients=60", "data.tokenizer.min_count=2",
        "trainer.max_steps=4", "eval_interval=4", "data.val_batches=1", "data.batch_size=8"])
    ckpt = train(cfg)["last_ckpt"]
    out = tmp_path / "sharded"

    def run(workers: int, **env) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "experiments/ehr/sharded_eval.sh", str(out), "2", str(workers), "task=synthetic_death",
             f"ckpt_path={ckpt}", "n_trajectories=3", "max_new_tokens=16", "max_labels=6", "n_boot=20", "device=cpu"],
            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PY": sys.executable, **env})

    first = run(2, JOIN="0")
    assert first.returncode == 0, first.stdout + (out / "s0.log").read_text()
    assert "not joined" in first.stdout and not (out / "joined").exists()
    kept = (out / "s0" / "report.json").stat().st_mtime_ns
    (out / "s1").rename(out / "s1.part")  # shard 1 killed before it finished: no s1, a leftover .part

    second = run(1)
    assert second.returncode == 0, second.stdout + (out / "joined.log").read_text()
    assert "shard 1/2 start" in second.stdout and "shard 0/2 start" not in second.stdout  # only the lost one
    assert (out / "s0" / "report.json").stat().st_mtime_ns == kept and not (out / "s1.part").exists()
    joined = json.loads((out / "joined" / "report.json").read_text())
    assert joined["metrics"]["trajectory"]["n"] == 6 and "baseline" in joined["metrics"]  # refitted at the join
    assert sum(joined["trajectory_ends"].values()) == 6 * 3
    parts = pd.concat([pd.read_csv(out / f"s{i}" / "predictions.csv") for i in (0, 1)])
    rows = pd.read_csv(out / "joined" / "predictions.csv")
    assert sorted(rows["subject_id"]) == sorted(parts["subject_id"])
    assert np.allclose(rows.sort_values(["subject_id", "prediction_time"])["risk_trajectory"],
                       parts.sort_values(["subject_id", "prediction_time"])["risk_trajectory"])

    (out / "s0").rename(out / "gone")  # a shard that fails: the run says so and does not join
    failed = run(1, PY="false")
    assert failed.returncode == 1 and "shard 0/2 FAILED" in failed.stdout and "shards 0 are missing" in failed.stdout
