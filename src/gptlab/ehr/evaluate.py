"""`python ehr_eval.py ckpt_path=... task=...`: risk for every label of a MEDS task, then a report.

Writes to out_dir: predictions.csv (one row per label: subject_id, prediction_time, label, then
one `risk_<method>` column per scorer: trajectory (the chosen estimator), naive / complete_case /
km (the three censoring estimators; or hazard, which samples its own way), one_step, baseline (count logistic regression), oracle when
the task has one), report.json and report.md (AUROC/AUPRC with bootstrap 95% CIs over patients,
the paired difference trajectory − baseline, N, prevalence, how trajectories ended and the
censored fraction, counted data problems per split) and calibration.png.

The flow is `score_labels` (the label rows of the chosen splits) → `trajectory_scores` →
`baseline_scores` → `write_report`; another scorer adds its column to the same rows. `shard=i/k`
scores a k-th of the labels; `predictions=[...]` (`reused_scores`) takes the place of sampling with
the risks of earlier runs (shards joined, or one run reported again).
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
from gptlab.ehr.baseline import feature_matrix, fit_count_baseline
from gptlab.ehr.meds import SPLITS, Problems, iter_timelines, read_dataset
from gptlab.ehr.meds_eval import NOT_RUN, write_and_evaluate
from gptlab.ehr.prepare import meds_source, pooled, problem_lines
from gptlab.ehr.risk import (
    CENSORING_ESTIMATORS,
    END_NAMES,
    ESTIMATORS,
    estimate_risk,
    horizon_token_budget,
    prompt_ids,
    sample_trajectories_batch,
)
from gptlab.ehr.tokenizer import EHRTokenizer
from gptlab.errors import MissingFile, UserError
from gptlab.tokenizers import tokenizer_from_spec

EVAL_CONF = Path(__file__).resolve().parents[1] / "conf" / "ehr_eval.yaml"
TASK_DIR = Path(__file__).resolve().parents[1] / "conf_ehr_eval" / "task"


def eval_config(task: str, **overrides: Any) -> dict[str, Any]:
    """`python ehr_eval.py task=<task> <overrides>`'s settings as a plain dict, without Hydra: for
    scripts that call score_labels / token_budget / trajectory_scores themselves (benchmarks,
    checks), so they score with ehr_eval's own defaults rather than copies of them. Keys that
    interpolate Hydra's run folder (out_dir) stay unresolved."""
    cfg = OmegaConf.to_container(OmegaConf.load(EVAL_CONF), resolve=False)
    for key in ("defaults", "hydra"):
        cfg.pop(key, None)
    cfg["task"] = OmegaConf.to_container(OmegaConf.load(TASK_DIR / f"{task}.yaml"))
    return {**cfg, **overrides}


def run_data_config(ckpt_path: Path) -> dict[str, Any]:
    """The `data` config of the training run that wrote ckpt_path (<run>/checkpoints/x.ckpt)."""
    run_cfg = ckpt_path.resolve().parent.parent / "config.yaml"
    if not run_cfg.exists():
        raise MissingFile(f"{run_cfg} not found: give meds_dir=<the MEDS folder the model was trained on>")
    return OmegaConf.to_container(OmegaConf.load(run_cfg).data, resolve=True)


def read_oracle(path: Path) -> dict[tuple[int, np.datetime64], float]:
    t = pq.read_table(path, columns=["subject_id", "prediction_time", "probability"])
    times = t["prediction_time"].to_numpy().astype("datetime64[us]")
    return {(int(s), tm): float(p) for s, tm, p in zip(t["subject_id"].to_numpy(), times, t["probability"].to_numpy())}


def evaluate_task(cfg: dict[str, Any]) -> dict[str, Any]:
    """cfg: ckpt_path, task {name, labels, oracle?, outcome, stop, censor?, horizon_days}, splits,
    meds_dir?, n_trajectories, max_new_tokens (a number or "auto"), max_new_tokens_quantile,
    risk_estimator, baseline, temperature, seed, device, threads, n_boot, max_labels, shard?,
    predictions?, out_dir.

    `threads` holds only while scoring: the caller's torch thread count is restored afterwards (a
    training run later in the same process must not silently change its arithmetic)."""
    before = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    try:
        return _evaluate_task(cfg)
    finally:
        torch.set_num_threads(before)


CENSOR_WARN = 0.05  # a report warns when more trajectories than this end censored


def _evaluate_task(cfg: dict[str, Any]) -> dict[str, Any]:
    ckpt_path = Path(cfg["ckpt_path"])
    device = torch.device(cfg["device"] if cfg["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model, ckpt = load_gpt_from_lightning_ckpt(ckpt_path, map_location=device)
    tok = tokenizer_from_spec(ckpt.get("tokenizer") or {})
    if not isinstance(tok, EHRTokenizer):
        raise UserError(f"{ckpt_path} was trained with a {tok.kind!r} tokenizer; ehr_eval needs an EHR (MEDS) model")
    meds_dir = Path(cfg["meds_dir"]) if cfg.get("meds_dir") else meds_source(run_data_config(ckpt_path))
    if cfg.get("risk_estimator", "hazard") not in ESTIMATORS:
        raise UserError(f"risk_estimator={cfg['risk_estimator']!r}: choose one of {list(ESTIMATORS)}")
    data = score_labels(cfg, meds_dir)
    extra: dict[str, Any] = {}
    if cfg.get("predictions"):  # an earlier run's risks for these labels: report again, sample nothing
        preds, ends, wall, n_tokens, budget, settings = reused_scores(cfg, data)
        cfg = {**cfg, **settings}
        extra["risks_reused_from"] = [str(p) for p in _as_list(cfg["predictions"])]
        check_reused_prompts(tok, data, preds, model.config.block_size - int(budget["max_new_tokens"]))
        todo = [k for k, row in enumerate(preds) if row is None]
        if todo:  # sample_missing=true: these labels now, with the reused run's settings and token budget
            sub = {**data, "rows": [data["rows"][k] for k in todo]}
            new, new_ends, new_wall, new_tokens = trajectory_scores(cfg, model, tok, sub, int(budget["max_new_tokens"]), device)
            complement_risks(cfg["task"], new)
            for k, row in zip(todo, new):
                preds[k] = row
            ends = {name: ends[name] + new_ends[name] for name in ends}
            wall, n_tokens = wall + new_wall, n_tokens + new_tokens
        extra["labels_sampled_now"] = len(todo)
    else:
        budget = token_budget(cfg, tok, data, model.config.block_size)
        preds, ends, wall, n_tokens = trajectory_scores(cfg, model, tok, data, budget["max_new_tokens"], device)
        complement_risks(cfg["task"], preds)  # before the baseline: it is fitted on the labels themselves
    baseline = baseline_scores(cfg, tok, data, preds) if cfg.get("baseline", True) else None
    return write_report(cfg, preds, ends, data["problems"], wall, n_tokens, meds_dir,
                        extra={"max_new_tokens_rule": budget, "baseline": baseline, **extra})


def _as_list(x: Any) -> list[Any]:
    return [x] if isinstance(x, (str, Path)) else list(x)


REUSED_SETTINGS = ("n_trajectories", "risk_estimator", "temperature")  # how the reused risks were sampled


def reused_scores(cfg: dict[str, Any], data: dict[str, Any]) -> tuple[
        list[dict[str, Any]], dict[str, int], float, int, dict[str, Any], dict[str, Any]]:
    """`predictions=<run>/predictions.csv` (or a list: shards of one scoring): the risks an earlier
    ehr_eval run sampled, for exactly this run's labels, with the sampling settings, trajectory ends
    and token budget from the report.json beside each file. Nothing is sampled: for reporting again
    (the baseline added, other bootstrap settings, meds-evaluation installed since) without paying
    for the trajectories twice. The baseline is refitted and the oracle re-read, never copied.

    Rule: the files together hold each label of this run (task, splits, max_labels) once, with the
    same label value, and were sampled with one setting; anything else is an error naming the file.
    With sample_missing=true a label the files lack, or hold with another value (the labels were
    corrected since), is left None in the returned rows for the caller to sample now; a label the
    files hold that this run lacks is still an error."""
    extend = bool(cfg.get("sample_missing"))
    want: dict[tuple[int, str], int] = {}
    for r in data["rows"]:
        key = (int(data["sids"][r]), str(data["times"][r]))
        if key in want:
            raise UserError(f"subject {key[0]} has two labels at {key[1]}: reused predictions cannot tell them apart; "
                            "score this task without predictions=")
        want[key] = int(r)
    task = cfg["task"]["name"]
    found: dict[tuple[int, str], dict[str, str]] = {}
    ends, wall, n_tokens = dict.fromkeys(END_NAMES, 0), 0.0, 0
    budget: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None
    for path in map(Path, _as_list(cfg["predictions"])):
        report_path = path.parent / "report.json"
        if not path.is_file() or not report_path.is_file():
            raise MissingFile(f"predictions={path}: needs that predictions.csv and the report.json beside it "
                              "(an ehr_eval output folder)")
        earlier = json.loads(report_path.read_text())
        if earlier["task"]["name"] != task:
            raise UserError(f"{path} holds risks for task {earlier['task']['name']!r}, not {task!r}")
        these = {k: earlier[k] for k in REUSED_SETTINGS}
        if settings is not None and these != settings:
            raise UserError(f"{path} was sampled with {these}, the files before it with {settings}: one scoring only")
        settings = these
        budget = budget or earlier.get("max_new_tokens_rule") or {"max_new_tokens": earlier["max_new_tokens"]}
        for name in END_NAMES:
            ends[name] += int(earlier["trajectory_ends"].get(name, 0))
        wall += float(earlier["sampling_seconds"])
        n_tokens += int(earlier["tokens_sampled"])
        with open(path, newline="") as f:
            for line, rec in enumerate(csv.DictReader(f), start=2):
                key = (int(rec["subject_id"]), rec["prediction_time"])
                r = want.get(key)
                if r is None:
                    raise UserError(f"{path}, line {line}: subject {key[0]} at {key[1]} is not a label of {task} in "
                                    f"splits {list(cfg['splits'])} (max_labels={cfg.get('max_labels')}): reuse "
                                    "predictions of the same task, splits and MEDS data")
                if key in found:
                    raise UserError(f"{path}, line {line}: subject {key[0]} at {key[1]} was given before (overlapping files?)")
                same = (rec["label"] == "True") == bool(data["ys"][r])
                if not same and not extend:
                    raise UserError(f"{path}, line {line}: label {rec['label']} for subject {key[0]} at {key[1]}, "
                                    "the MEDS label file says otherwise: the labels changed since that run "
                                    "(sample_missing=true samples such labels again)")
                if same:
                    found[key] = rec
    missing = [k for k in want if k not in found]
    if missing and not extend:
        raise UserError(f"predictions={cfg['predictions']} hold {len(found)} of the {len(want)} labels of {task} in "
                        f"splits {list(cfg['splits'])}; first missing: subject {missing[0][0]} at {missing[0][1]} "
                        "(sample_missing=true samples the rest now)")
    preds: list[dict[str, Any] | None] = []
    for key, r in want.items():  # the labels' order, as sampling writes it
        rec = found.get(key)
        if rec is None:
            preds.append(None)
            continue
        row: dict[str, Any] = {"subject_id": key[0], "prediction_time": key[1], "label": bool(data["ys"][r])}
        row.update({k: float(v) for k, v in rec.items() if k.startswith("risk_") and k not in ("risk_baseline", "risk_oracle")})
        row["censored_fraction"] = float(rec["censored_fraction"])
        row["prompt_tokens"] = int(rec["prompt_tokens"])
        if data["oracle"] is not None:
            row["risk_oracle"] = data["oracle"][(key[0], data["times"][r])]
        preds.append(row)
    return preds, ends, wall, n_tokens, budget, settings


def check_reused_prompts(tok: EHRTokenizer, data: dict[str, Any], preds: list[dict[str, Any] | None],
                         max_len: int) -> None:
    """A reused risk belongs to the prompt it was sampled from: its prompt_tokens must be this run's
    prompt length for the label, or the records (or the tokenizer) changed since that run."""
    for row, r in zip(preds, data["rows"]):
        if row is None:
            continue
        n = len(prompt_ids(tok, data["scored"][int(data["sids"][r])], data["times"][r], max_len))
        if n != row["prompt_tokens"]:
            raise UserError(f"predictions=: subject {row['subject_id']} at {row['prediction_time']} was sampled from a "
                            f"{row['prompt_tokens']}-token prompt; its prompt here has {n}: the records or the tokenizer "
                            "changed since that run, so its risks cannot be reused")


def score_labels(cfg: dict[str, Any], meds_dir: Path) -> dict[str, Any]:
    """The label rows of the chosen splits (and of train, for the baseline and the token budget),
    with the timelines they need and the problems counted per split."""
    task = cfg["task"]
    bad = [s for s in cfg["splits"] if s not in SPLITS]
    if bad:
        raise UserError(f"splits {bad} are not MEDS splits; choose from {list(SPLITS)}")
    problems = {"dataset": Problems(), **{s: Problems() for s in SPLITS}}
    tables = read_dataset(meds_dir, problems["dataset"])
    timelines = {s: {tl.subject_id: tl for tl in iter_timelines(tables[s], problems[s])}
                 for s in dict.fromkeys([*cfg["splits"], "train"])}
    labels = task_labels(task, meds_dir)
    sids = labels["subject_id"].to_numpy()
    times = labels["prediction_time"].to_numpy().astype("datetime64[us]")
    ys = labels["boolean_value"].to_numpy(zero_copy_only=False).astype(bool)
    scored = {sid: tl for s in cfg["splits"] for sid, tl in timelines[s].items()}
    in_split = np.array([s in scored for s in sids])
    problems["dataset"].add(f"labels_of_subjects_outside_{'+'.join(cfg['splits'])}_not_scored", int((~in_split).sum()))
    rows = np.flatnonzero(in_split)
    if cfg.get("max_labels"):
        rows = rows[: int(cfg["max_labels"])]
    if cfg.get("shard"):
        i, k = parse_shard(cfg["shard"])
        rows = rows[i::k]
    if len(rows) == 0:
        raise UserError(f"{meds_dir / task['labels']}: no labels for subjects of splits {cfg['splits']}")
    train_rows = np.flatnonzero([s in timelines["train"] for s in sids])
    oracle = read_oracle(meds_dir / task["oracle"]) if task.get("oracle") else None
    return {"sids": sids, "times": times, "ys": ys, "rows": rows, "train_rows": train_rows, "scored": scored,
            "train": timelines["train"], "oracle": oracle, "problems": problems}


def parse_shard(shard: Any) -> tuple[int, int]:
    """shard "i/k": every k-th label from the i-th (0-based), so k processes share one scoring with
    similar prompt-length mixes; `predictions=[the k predictions.csv]` joins them into one report."""
    try:
        i, k = (int(x) for x in str(shard).split("/"))
    except ValueError:
        i, k = -1, 0
    if not 0 <= i < k:
        raise UserError(f"shard={shard!r}: write i/k with 0 <= i < k, e.g. shard=0/4 (the first of 4 shards)")
    return i, k


def token_budget(cfg: dict[str, Any], tok: EHRTokenizer, data: dict[str, Any], block_size: int) -> dict[str, Any]:
    """max_new_tokens: the configured number, or ("auto") the max_new_tokens_quantile of the
    tokens train records hold after a train prediction time until the horizon or the task's first
    outcome / stop / censor token, capped at half the context so the prompt keeps the other half."""
    if cfg["max_new_tokens"] != "auto":
        return {"max_new_tokens": int(cfg["max_new_tokens"]), "rule": "configured"}
    q = float(cfg.get("max_new_tokens_quantile", 0.99))
    rows = data["train_rows"][:: max(1, len(data["train_rows"]) // 2000)]  # ≤ ~2,000 labels: a quantile, not a census
    task = cfg["task"]
    end_ids = tok.ids_with_prefix([*task["outcome"], *(task["stop"] or []), *task.get("censor", ["<TL_END>"])])
    need, n = horizon_token_budget(tok, data["train"], data["sids"][rows], data["times"][rows],
                                   float(task["horizon_days"]) * 1440, q, end_ids)
    out = {"max_new_tokens": min(need, block_size // 2), "rule": f"quantile {q} of the new tokens a train record takes after a "
           f"prediction time to pass the horizon or reach an outcome/stop, inclusive ({n} train labels): {need}", "capped_at_half_block": need > block_size // 2}
    print(f"[gptlab] max_new_tokens={out['max_new_tokens']} ({out['rule']})")
    return out


def trajectory_scores(cfg: dict[str, Any], model, tok: EHRTokenizer, data: dict[str, Any], max_new: int,
                      device: torch.device) -> tuple[list[dict[str, Any]], dict[str, int], float, int]:
    """One predictions row per label: every censoring estimator's risk (or, for risk_estimator=hazard,
    the hazard risk, from its own sampling) and the one-step score."""
    task = cfg["task"]
    outcome_ids = tok.ids_with_prefix(task["outcome"])
    if not outcome_ids:
        raise UserError(f"task.outcome {task['outcome']} matches no token of the vocabulary; e.g. {tok.vocab[:8]}")
    # <TL_END> means the record stops (outcome unknown): censoring, never a real "no outcome"
    censor_ids = tok.ids_with_prefix(task.get("censor", ["<TL_END>"]))
    stop_ids = sorted(set(tok.ids_with_prefix(task["stop"])) - set(censor_ids)) if task["stop"] else []
    g = torch.Generator(device=device).manual_seed(int(cfg["seed"]))
    estimator = cfg.get("risk_estimator", "hazard")
    hazard = estimator == "hazard"  # its own sampling: the censoring estimators do not apply to its rows
    ends = dict.fromkeys(END_NAMES, 0)
    t0, n_tokens = time.perf_counter(), 0
    sids, times, ys = data["sids"], data["times"], data["ys"]
    prompts = [prompt_ids(tok, data["scored"][int(sids[r])], times[r], model.config.block_size - max_new)
               for r in data["rows"]]
    # prompt_batch labels sample together (sample_trajectories_batch), taken in order of prompt length:
    # a step's attention spans the batch's longest prompt, so neighbours in length waste the least.
    # Rows keep the labels' order.
    order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))
    per_batch = cfg.get("prompt_batch", "auto")
    if per_batch in (None, "auto"):
        per_batch = 640 // int(cfg["n_trajectories"])
    elif not str(per_batch).isdigit() or int(per_batch) < 1:
        raise UserError(f"prompt_batch={per_batch!r}: give a number of labels (≥ 1) to sample together, or auto")
    per_batch = max(1, int(per_batch))
    batches = [order[i: i + per_batch] for i in range(0, len(order), per_batch)]
    preds: list[dict[str, Any] | None] = [None] * len(prompts)
    done = 0
    for ks in batches:
        results = sample_trajectories_batch(
            model, [prompts[k] for k in ks], n=int(cfg["n_trajectories"]), outcome_ids=outcome_ids,
            stop_ids=stop_ids, censor_ids=censor_ids, token_minutes=tok.token_minutes,
            horizon_minutes=float(task["horizon_days"]) * 1440, max_new_tokens=max_new,
            temperature=float(cfg["temperature"]), generator=g, hazard=hazard)
        for k, res in zip(ks, results):
            r = data["rows"][k]
            for code, name in enumerate(END_NAMES):
                ends[name] += int((res.end_kind == code).sum())
            n_tokens += res.tokens
            risks = ({"hazard": float(res.row_risk.mean())} if hazard else
                     {e: estimate_risk(res.end_kind, res.end_minutes, e) for e in CENSORING_ESTIMATORS})
            row = {"subject_id": int(sids[r]), "prediction_time": str(times[r]), "label": bool(ys[r]),
                   "risk_trajectory": risks[estimator],
                   **{f"risk_{e}": v for e, v in risks.items()}, "risk_one_step": res.one_step,
                   "censored_fraction": float(res.censored + res.unfinished) / len(res.end_kind),
                   "prompt_tokens": len(prompts[k])}
            if data["oracle"] is not None:
                row["risk_oracle"] = data["oracle"][(int(sids[r]), times[r])]
            preds[k] = row
        if (done + len(ks)) // 100 > done // 100:
            print(f"[gptlab] {done + len(ks)}/{len(prompts)} labels scored ({time.perf_counter() - t0:.0f} s)", flush=True)
        done += len(ks)
    return preds, ends, time.perf_counter() - t0, n_tokens


def baseline_scores(cfg: dict[str, Any], tok: EHRTokenizer, data: dict[str, Any],
                    preds: list[dict[str, Any]]) -> dict[str, Any]:
    """Fit the count baseline on the train split's labels and add `risk_baseline` to each row."""
    t0 = time.perf_counter()
    tr, rows = data["train_rows"], data["rows"]
    X_train = feature_matrix(tok, data["train"], data["sids"][tr], data["times"][tr])
    fitted = fit_count_baseline(X_train, data["ys"][tr], data["sids"][tr], seed=int(cfg["seed"]))
    scores = fitted.predict(feature_matrix(tok, data["scored"], data["sids"][rows], data["times"][rows]))
    for row, p in zip(preds, scores):
        row["risk_baseline"] = float(p)
    return {"model": "LogisticRegressionCV (L2) on standardised token counts up to the prediction time + age",
            "C": fitted.C, "C_chosen_by": "StratifiedGroupKFold (≤ 5 folds) over train patients, AUROC",
            "train_labels": fitted.n_train, "train_patients": fitted.n_train_patients,
            "seconds": time.perf_counter() - t0}


def write_report(cfg: dict[str, Any], preds: list[dict[str, Any]], ends: dict[str, int],
                 problems: dict[str, Problems], wall: float, n_tokens: int, meds_dir: Path,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(preds[0]))
        w.writeheader()
        w.writerows(preds)
    y = np.array([p["label"] for p in preds])
    scores = {k.removeprefix("risk_"): np.array([p[k] for p in preds]) for k in preds[0] if k.startswith("risk_")}
    task, n_boot, seed = cfg["task"], int(cfg["n_boot"]), int(cfg["seed"])
    patients = np.array([p["subject_id"] for p in preds])  # the bootstrap resamples patients, not rows
    results = {name: M.summarize(y, s, n_boot, seed, groups=patients) for name, s in scores.items()}
    n_traj = sum(ends.values())
    report = {
        "task": task, "ckpt_path": str(cfg["ckpt_path"]), "meds_dir": str(meds_dir), "splits": list(cfg["splits"]),
        "n_trajectories": int(cfg["n_trajectories"]), "risk_estimator": cfg.get("risk_estimator", "hazard"),
        "temperature": float(cfg["temperature"]), "patients": int(len(set(patients.tolist()))),
        "ci": "percentile bootstrap over patients", "metrics": results, "trajectory_ends": ends,
        "censored_fraction": (ends["censored"] + ends["unfinished"]) / n_traj if n_traj else 0.0,
        "sampling_seconds": wall, "tokens_sampled": n_tokens,
        "problems": pooled(problems.values()).summary(),
        "problems_by_split": {k: p.summary() for k, p in problems.items() if p.counts},
        **(extra or {}),
    }
    report["max_new_tokens"] = (extra or {}).get("max_new_tokens_rule", {}).get("max_new_tokens", cfg["max_new_tokens"])
    if "baseline" in scores:
        report["trajectory_minus_baseline"] = {
            m: M.paired_difference(f, y, scores["trajectory"], scores["baseline"], n_boot, seed, groups=patients)
            for m, f in (("auroc", M.auroc), ("auprc", M.auprc))}
    report["meds_evaluation"] = write_and_evaluate(
        out, preds, {k.removeprefix("risk_"): k for k in preds[0] if k.startswith("risk_")}, int(cfg["seed"]))
    if "oracle" in results and results["oracle"]["auroc"] > 0:
        report["auroc_ratio_to_oracle"] = results["trajectory"]["auroc"] / results["oracle"]["auroc"]
        t, o = scores["trajectory"], scores["oracle"]  # the ratio's CI: both AUROCs on each patient resample
        report["auroc_ratio_to_oracle_ci"] = list(M.bootstrap_ci(
            lambda yy, i: M.auroc(yy, t[i.astype(int)]) / M.auroc(yy, o[i.astype(int)]),
            y, np.arange(len(y), dtype=float), n_boot, seed, groups=patients))
        report["estimator_bias_vs_oracle"] = {
            e: {"mean_risk_minus_mean_oracle": float(scores[e].mean() - scores["oracle"].mean()),
                "mean_abs_error": float(np.abs(scores[e] - scores["oracle"]).mean())}
            for e in ESTIMATORS if e in scores}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    shown = {k: v for k, v in scores.items() if k not in ESTIMATORS}  # trajectory already is the chosen one
    M.calibration_plot(out / "calibration.png", y, shown,
                       f"{task['name']}: calibration\nN={len(y)}, prevalence {y.mean():.1%}, equal-count bins")
    lines = report_lines(cfg, report, results, y, meds_dir)
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"[gptlab] report: {out / 'report.md'}, {out / 'calibration.png'}, {out / 'predictions.csv'}")
    return report


def report_lines(cfg: dict[str, Any], report: dict[str, Any], results: dict[str, Any], y: np.ndarray,
                 meds_dir: Path) -> list[str]:
    """report.md: the scorers' table, the paired difference, how trajectories ended, problems per split."""
    task = cfg["task"]
    lines = [f"# {task['name']}", "", f"checkpoint `{cfg['ckpt_path']}`, MEDS `{meds_dir}`, splits {list(cfg['splits'])}",
             f"N = {len(y)} predictions, {int(y.sum())} positive (prevalence {y.mean():.1%}); "
             f"{cfg['n_trajectories']} trajectories each, horizon {task['horizon_days']} days, "
             f"max_new_tokens {report['max_new_tokens']}, risk estimator `{report['risk_estimator']}`", "",
             "| scorer | AUROC (95% CI) | AUPRC (95% CI) |", "|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['auroc']:.3f} ({r['auroc_ci'][0]:.3f}–{r['auroc_ci'][1]:.3f}) | "
                     f"{r['auprc']:.3f} ({r['auprc_ci'][0]:.3f}–{r['auprc_ci'][1]:.3f}) |")
    for m, d in report.get("trajectory_minus_baseline", {}).items():
        lines.append(f"\ntrajectory − count baseline, {m.upper()} (paired, same patient resamples): "
                     f"{d['difference']:+.3f} (95% CI {d['ci'][0]:+.3f} to {d['ci'][1]:+.3f})")
    agree = [m["max_abs_difference"] for m in report["meds_evaluation"].values()
             if isinstance(m, dict) and "max_abs_difference" in m]
    if NOT_RUN in report["meds_evaluation"]:
        lines.append(f"\nmeds-evaluation: not run: {report['meds_evaluation'][NOT_RUN]}")
    if agree:
        lines.append(f"\nmeds-evaluation on `meds_predictions_<scorer>.parquet`: max |ours - theirs| = {max(agree):.1e}")
    if "auroc_ratio_to_oracle" in report:
        lo, hi = report["auroc_ratio_to_oracle_ci"]
        # four decimals: targets are set on this ratio (e.g. 0.97), and three would round 0.9697 onto one
        lines.append(f"\ntrajectory AUROC / oracle AUROC = {report['auroc_ratio_to_oracle']:.4f} "
                     f"(95% CI {lo:.3f}–{hi:.3f}, both on each patient resample)")
        lines.append("estimator bias vs the oracle (mean risk − mean oracle; mean |risk − oracle|): " + "; ".join(
            f"{e} {b['mean_risk_minus_mean_oracle']:+.4f}, {b['mean_abs_error']:.4f}"
            for e, b in report["estimator_bias_vs_oracle"].items()))
    frac = report["censored_fraction"]
    lines += ["", f"trajectory ends: {report['trajectory_ends']}; censored (<TL_END> or token budget used up before "
              f"the horizon): {frac:.1%}; {report['tokens_sampled']:,} tokens sampled in {report['sampling_seconds']:.0f} s"]
    if frac > CENSOR_WARN:
        lines.append(f"**WARNING: {frac:.1%} of trajectories are censored (> {CENSOR_WARN:.0%})**: the risk leans on "
                     f"the `{report['risk_estimator']}` estimator; raise max_new_tokens or check the task's censor tokens.")
    lines += ["", "counted data problems, per split:"]
    lines += [f"- {line}" for line in problem_lines(report["problems_by_split"])] or ["- none"]
    lines += ["", f"CIs: percentile bootstrap over patients ({report['patients']}; all of a drawn patient's "
              f"predictions together), {int(cfg['n_boot'])} resamples.", ""]
    return lines
