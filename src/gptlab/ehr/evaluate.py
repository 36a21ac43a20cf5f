"""`python ehr_eval.py ckpt_path=... task=...`: risk for every label of a MEDS task, then a report.

Writes to out_dir: predictions.csv (one row per label: trajectory risk, one-step baseline, oracle
when the task has one), report.json and report.md (AUROC/AUPRC with bootstrap 95% CIs, N,
prevalence, trajectory end reasons, counted data problems) and calibration.png.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from omegaconf import OmegaConf

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.ehr import metrics as M
from gptlab.ehr.aces import complement_risks, task_labels
from gptlab.ehr.meds import SPLITS, Problems, iter_timelines, read_dataset
from gptlab.ehr.meds_eval import write_and_evaluate
from gptlab.ehr.prepare import meds_source
from gptlab.ehr.risk import prompt_ids, sample_trajectories
from gptlab.ehr.tokenizer import EHRTokenizer
from gptlab.tokenizers import tokenizer_from_spec


def run_data_config(ckpt_path: Path) -> dict[str, Any]:
    """The `data` config of the training run that wrote ckpt_path (<run>/checkpoints/x.ckpt)."""
    run_cfg = ckpt_path.resolve().parent.parent / "config.yaml"
    if not run_cfg.exists():
        raise FileNotFoundError(f"{run_cfg} not found: give meds_dir=<the MEDS folder the model was trained on>")
    return OmegaConf.to_container(OmegaConf.load(run_cfg).data, resolve=True)


def read_oracle(path: Path) -> dict[tuple[int, np.datetime64], float]:
    t = pq.read_table(path, columns=["subject_id", "prediction_time", "probability"])
    times = t["prediction_time"].to_numpy().astype("datetime64[us]")
    return {(int(s), tm): float(p) for s, tm, p in zip(t["subject_id"].to_numpy(), times, t["probability"].to_numpy())}


def evaluate_task(cfg: dict[str, Any]) -> dict[str, Any]:
    """cfg: ckpt_path, task {name, labels, oracle?, outcome, stop, horizon_days}, splits, meds_dir?,
    n_trajectories, max_new_tokens, temperature, seed, device, threads, n_boot, max_labels, out_dir.

    `threads` holds only while scoring: the caller's torch thread count is restored afterwards (a
    training run later in the same process must not silently change its arithmetic)."""
    before = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    try:
        return _evaluate_task(cfg)
    finally:
        torch.set_num_threads(before)


def _evaluate_task(cfg: dict[str, Any]) -> dict[str, Any]:
    ckpt_path = Path(cfg["ckpt_path"])
    device = torch.device(cfg["device"] if cfg["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model, ckpt = load_gpt_from_lightning_ckpt(ckpt_path, map_location=device)
    tok = tokenizer_from_spec(ckpt.get("tokenizer") or {})
    if not isinstance(tok, EHRTokenizer):
        raise ValueError(f"{ckpt_path} was trained with a {tok.kind!r} tokenizer; ehr_eval needs an EHR (MEDS) model")
    meds_dir = Path(cfg["meds_dir"]) if cfg.get("meds_dir") else meds_source(run_data_config(ckpt_path))
    task = cfg["task"]
    bad = [s for s in cfg["splits"] if s not in SPLITS]
    if bad:
        raise ValueError(f"splits {bad} are not MEDS splits; choose from {list(SPLITS)}")

    problems = Problems()
    tables = read_dataset(meds_dir, problems)
    timelines = {tl.subject_id: tl for s in cfg["splits"] for tl in iter_timelines(tables[s], problems)}
    labels = task_labels(task, meds_dir)
    sids = labels["subject_id"].to_numpy()
    times = labels["prediction_time"].to_numpy().astype("datetime64[us]")
    ys = labels["boolean_value"].to_numpy(zero_copy_only=False).astype(bool)
    in_split = np.array([s in timelines for s in sids])
    problems.add(f"labels_of_subjects_outside_{'+'.join(cfg['splits'])}_not_scored", int((~in_split).sum()))
    rows = np.flatnonzero(in_split)
    if cfg.get("max_labels"):
        rows = rows[: int(cfg["max_labels"])]
    if len(rows) == 0:
        raise ValueError(f"task {task['name']} on {meds_dir}: no labels for subjects of splits {cfg['splits']}")
    oracle = read_oracle(meds_dir / task["oracle"]) if task.get("oracle") else None

    outcome_ids, stop_ids = tok.ids_with_prefix(task["outcome"]), tok.ids_with_prefix(task["stop"])
    if not outcome_ids:
        raise ValueError(f"task.outcome {task['outcome']} matches no token of the vocabulary; e.g. {tok.vocab[:8]}")
    max_new = int(cfg["max_new_tokens"])
    g = torch.Generator(device=device).manual_seed(int(cfg["seed"]))
    preds = []
    ends = {"outcome": 0, "stop": 0, "horizon": 0, "unfinished": 0}
    t0, n_tokens = time.perf_counter(), 0
    for k, r in enumerate(rows):
        tl = timelines[int(sids[r])]
        prompt = prompt_ids(tok, tl, times[r], model.config.block_size - max_new)
        res = sample_trajectories(model, prompt, n=int(cfg["n_trajectories"]), outcome_ids=outcome_ids,
                                  stop_ids=stop_ids, token_minutes=tok.token_minutes,
                                  horizon_minutes=float(task["horizon_days"]) * 1440, max_new_tokens=max_new,
                                  temperature=float(cfg["temperature"]), generator=g)
        for key, v in (("outcome", res.outcomes), ("stop", res.stopped), ("horizon", res.past_horizon),
                       ("unfinished", res.unfinished)):
            ends[key] += v
        n_tokens += res.tokens
        row = {"subject_id": int(sids[r]), "prediction_time": str(times[r]), "label": bool(ys[r]),
               "risk_trajectory": res.risk, "risk_one_step": res.one_step, "prompt_tokens": len(prompt)}
        if oracle is not None:
            row["risk_oracle"] = oracle[(int(sids[r]), times[r])]
        preds.append(row)
        if (k + 1) % 100 == 0:
            print(f"[gptlab] {k + 1}/{len(rows)} labels scored ({time.perf_counter() - t0:.0f} s)", flush=True)
    wall = time.perf_counter() - t0
    complement_risks(task, preds)
    return write_report(cfg, preds, ends, problems, wall, n_tokens, meds_dir)


def write_report(cfg: dict[str, Any], preds: list[dict[str, Any]], ends: dict[str, int], problems: Problems,
                 wall: float, n_tokens: int, meds_dir: Path) -> dict[str, Any]:
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(preds[0]))
        w.writeheader()
        w.writerows(preds)
    y = np.array([p["label"] for p in preds])
    scorers = {"trajectory": "risk_trajectory", "one_step": "risk_one_step", "oracle": "risk_oracle"}
    scores = {name: np.array([p[key] for p in preds]) for name, key in scorers.items() if key in preds[0]}
    task, n_boot = cfg["task"], int(cfg["n_boot"])
    patients = np.array([p["subject_id"] for p in preds])  # the bootstrap resamples patients, not rows
    results = {name: M.summarize(y, s, n_boot, int(cfg["seed"]), groups=patients) for name, s in scores.items()}
    report = {
        "task": task, "ckpt_path": str(cfg["ckpt_path"]), "meds_dir": str(meds_dir), "splits": list(cfg["splits"]),
        "n_trajectories": int(cfg["n_trajectories"]), "max_new_tokens": int(cfg["max_new_tokens"]),
        "temperature": float(cfg["temperature"]), "patients": int(len(set(patients.tolist()))),
        "ci": "percentile bootstrap over patients", "metrics": results, "trajectory_ends": ends,
        "sampling_seconds": wall, "tokens_sampled": n_tokens, "problems": problems.summary(),
    }
    report["meds_evaluation"] = write_and_evaluate(out, preds, scorers, int(cfg["seed"]))
    if "oracle" in results and results["oracle"]["auroc"] > 0:
        report["auroc_ratio_to_oracle"] = results["trajectory"]["auroc"] / results["oracle"]["auroc"]
    (out / "report.json").write_text(json.dumps(report, indent=1))
    M.calibration_plot(out / "calibration.png", y, scores,
                       f"{task['name']}: calibration\nN={len(y)}, prevalence {y.mean():.1%}, equal-count bins")
    lines = [f"# {task['name']}", "", f"checkpoint `{cfg['ckpt_path']}`, MEDS `{meds_dir}`, splits {list(cfg['splits'])}",
             f"N = {len(y)} predictions, {int(y.sum())} positive (prevalence {y.mean():.1%}); "
             f"{cfg['n_trajectories']} trajectories each, horizon {task['horizon_days']} days", "",
             "| scorer | AUROC (95% CI) | AUPRC (95% CI) |", "|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['auroc']:.3f} ({r['auroc_ci'][0]:.3f}–{r['auroc_ci'][1]:.3f}) | "
                     f"{r['auprc']:.3f} ({r['auprc_ci'][0]:.3f}–{r['auprc_ci'][1]:.3f}) |")
    agree = [m["max_abs_difference"] for m in report["meds_evaluation"].values() if "max_abs_difference" in m]
    if agree:
        lines.append(f"\nmeds-evaluation on `meds_predictions_<scorer>.parquet`: max |ours - theirs| = {max(agree):.1e}")
    if "auroc_ratio_to_oracle" in report:
        lines.append(f"\ntrajectory AUROC / oracle AUROC = {report['auroc_ratio_to_oracle']:.3f}")
    lines += ["", f"trajectory ends: {ends}; {n_tokens:,} tokens sampled in {wall:.0f} s",
              "", "counted data problems: " + ("; ".join(problems.lines()) or "none"), "",
              f"CIs: percentile bootstrap over patients ({len(set(patients.tolist()))}; all of a drawn patient's "
              f"predictions together), {n_boot} resamples.", ""]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"[gptlab] report: {out / 'report.md'}, {out / 'calibration.png'}, {out / 'predictions.csv'}")
    return report
