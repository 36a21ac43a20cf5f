"""Patient-level k-fold cross-validation of the EHR path on the MIMIC-IV demo, for the four ACES tasks.

The demo's own split leaves about one positive per task outside train, so no held-out figure means
anything. Here the 100 patients are cut into k folds; for each fold a small GPT is trained on the
other k-1 (a tenth of them kept as its tuning split for validation loss), every label of the held
fold is scored by trajectory sampling, and the held folds' predictions are pooled: each label is
scored once, by a model that never saw its patient. Labels come from ACES on the whole dataset
(src/gptlab/conf_ehr_eval/task/*.yaml, `aces:`), so a fold's labels are exactly the full dataset's labels of its patients.

Resumable fold by fold and stage by stage: a fold's MEDS copy, its training run (`done` marker) and
each task's evaluation (report.json) are reused when present; rerun the same command to continue.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/ehr/mimic_demo/cv.py --meds data/mimic-iv-demo-meds \
        --out outputs/mimic_demo_cv --k 5 --steps 300 --n-trajectories 20
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from gptlab import conf_ehr_eval
from gptlab.ehr import metrics as M
from gptlab.ehr.aces import extract_labels
from gptlab.ehr.meds_eval import evaluate as meds_evaluate
from gptlab.ehr.meds_eval import prediction_table

ROOT = Path(__file__).resolve().parents[3]
TASKS = ("icu_mortality", "in_hospital_mortality", "readmission_30d", "long_los")


def task_config(name: str) -> dict:
    return yaml.safe_load((Path(conf_ehr_eval.__file__).parent / "task" / f"{name}.yaml").read_text())


def folds_of(subjects: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """k disjoint groups of patients, shuffled with `seed`."""
    return np.array_split(np.random.default_rng(seed).permutation(np.sort(subjects)), k)


def write_fold(meds: Path, dest: Path, held: np.ndarray, seed: int) -> None:
    """A MEDS copy of the dataset whose held_out split is `held`; a tenth of the rest is tuning."""
    if (dest / "metadata" / "subject_splits.parquet").exists():
        return
    data = pa.concat_tables([pq.read_table(p) for p in sorted((meds / "data").rglob("*.parquet"))],
                            promote_options="permissive")
    rest = np.setdiff1d(np.unique(data["subject_id"].to_numpy()), held)
    tuning = np.random.default_rng(seed).choice(rest, max(1, len(rest) // 10), replace=False)
    splits = {"held_out": held, "tuning": tuning, "train": np.setdiff1d(rest, tuning)}
    for split, ids in splits.items():
        (dest / "data" / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(data.filter(pc.is_in(data["subject_id"], pa.array(ids))), dest / "data" / split / "0.parquet")
    (dest / "metadata").mkdir(parents=True, exist_ok=True)
    for name in ("codes.parquet", "dataset.json"):
        if (meds / "metadata" / name).exists():
            (dest / "metadata" / name).write_bytes((meds / "metadata" / name).read_bytes())
    ids = np.concatenate(list(splits.values()))
    names = np.concatenate([[s] * len(v) for s, v in splits.items()])
    pq.write_table(pa.table({"subject_id": pa.array(ids, pa.int64()), "split": pa.array(names)}),
                   dest / "metadata" / "subject_splits.parquet")


def train_fold(fold_dir: Path, args: argparse.Namespace) -> Path:
    run = fold_dir / "train"
    ckpt = run / "checkpoints" / "last.ckpt"
    if (run / "done").exists():
        return ckpt
    cmd = [sys.executable, str(ROOT / "train.py"), "experiment=ehr_mimic_demo", f"data.path={fold_dir / 'meds'}",
           f"data.name=mimic_demo_{fold_dir.name}", f"paths.data_dir={fold_dir / 'prepared'}",
           f"trainer.max_steps={args.steps}", f"optim.lr_decay_steps={args.steps}",
           f"eval_interval={args.steps}", f"seed={args.seed}", f"hydra.run.dir={run}",
           "trainer.enable_progress_bar=false", *args.train_overrides]
    t0, load = time.time(), os.getloadavg()[0]
    print("[cv] " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt} not written by the training run in {run}")
    (run / "done").write_text(json.dumps({"wall_s": time.time() - t0, "load_start": load,
                                          "load_end": os.getloadavg()[0], "cmd": cmd}))
    return ckpt


def eval_fold(fold_dir: Path, ckpt: Path, task: str, args: argparse.Namespace) -> Path:
    from gptlab.ehr.evaluate import evaluate_task

    out = fold_dir / f"eval_{task}"
    if (out / "report.json").exists():
        return out
    cfg = task_config(task)
    cfg.update(labels=f"tasks/{task}.parquet", aces_labels=False)
    evaluate_task({"ckpt_path": str(ckpt), "meds_dir": str(fold_dir / "meds"), "task": cfg, "splits": ["held_out"],
                   "n_trajectories": args.n_trajectories, "max_new_tokens": args.max_new_tokens,
                   "risk_estimator": args.risk_estimator,
                   "temperature": 1.0, "max_labels": None, "n_boot": 200, "seed": args.seed, "device": "cpu",
                   "threads": 1, "out_dir": str(out)})
    return out


def pooled(out: Path, task: str, folds: list[int], n_boot: int) -> dict:
    rows = []
    for f in folds:
        with open(out / f"fold{f}" / f"eval_{task}" / "predictions.csv") as fh:
            rows += [{**r, "fold": f} for r in csv.DictReader(fh)]
    y = np.array([r["label"] == "True" for r in rows])
    groups = np.array([int(r["subject_id"]) for r in rows])
    res = {"folds": folds, "labels": len(rows), "positives": int(y.sum()), "patients": len(set(groups.tolist()))}
    scores = {}
    for scorer in ("risk_trajectory", "risk_one_step", "risk_baseline"):
        if scorer not in rows[0]:
            continue
        s = scores[scorer] = np.array([float(r[scorer]) for r in rows])
        res[scorer] = M.summarize(y, s, n_boot, 0, groups=groups)
        table = prediction_table(groups, [r["prediction_time"] for r in rows], y, s)
        pq.write_table(table, out / f"pooled_{task}_{scorer}.parquet")
        res[scorer]["meds_evaluation"] = meds_evaluate(table)
    if "risk_baseline" in scores:  # each fold's baseline was fitted on that fold's training patients' labels
        res["trajectory_minus_baseline"] = {
            m: M.paired_difference(f, y, scores["risk_trajectory"], scores["risk_baseline"], n_boot, 0, groups=groups)
            for m, f in (("auroc", M.auroc), ("auprc", M.auprc))}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meds", default=str(ROOT / "data" / "mimic-iv-demo-meds"))
    ap.add_argument("--out", default=str(ROOT / "outputs" / "mimic_demo_cv"))
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n-trajectories", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--risk-estimator", default="hazard", help="ehr_eval's risk_estimator (hazard, km, ...)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--folds", type=int, nargs="*", help="only these folds (default: all), e.g. to split the work")
    ap.add_argument("--pool-only", action="store_true",
                    help="train nothing: pool the folds finished so far (a partial run, labelled as such)")
    ap.add_argument("train_overrides", nargs="*", help="extra train.py overrides, e.g. model.n_layer=2")
    args = ap.parse_args()
    meds, out = Path(args.meds), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = {}
    for task in args.tasks:
        path = out / "labels" / f"{task}.parquet"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(extract_labels(task_config(task), meds), path)
        labels[task] = pq.read_table(path)
    subjects = np.unique(np.concatenate([pq.read_table(p, columns=["subject_id"])["subject_id"].to_numpy()
                                         for p in sorted((meds / "data").rglob("*.parquet"))]))
    folds = folds_of(subjects, args.k, args.seed)
    for f in [] if args.pool_only else args.folds if args.folds else range(args.k):
        fold_dir = out / f"fold{f}"
        write_fold(meds, fold_dir / "meds", folds[f], args.seed + f)
        (fold_dir / "meds" / "tasks").mkdir(exist_ok=True)
        for task, table in labels.items():
            pq.write_table(table, fold_dir / "meds" / "tasks" / f"{task}.parquet")
        ckpt = train_fold(fold_dir, args)
        for task in args.tasks:
            eval_fold(fold_dir, ckpt, task, args)
    done = [f for f in range(args.k) if all((out / f"fold{f}" / f"eval_{t}" / "report.json").exists()
                                            for t in args.tasks)]
    if done and (args.pool_only or len(done) == args.k):
        report = {t: pooled(out, t, done, args.n_boot) for t in args.tasks}
        name = "pooled.json" if len(done) == args.k else f"pooled_partial_{len(done)}of{args.k}.json"
        (out / name).write_text(json.dumps(report, indent=1))
        print(f"[cv] folds pooled: {done} of {args.k}")
        for t, r in report.items():
            line = f"{t}: {r['labels']} labels, {r['positives']} positive, {r['patients']} patients"
            for scorer in ("risk_trajectory", "risk_one_step", "risk_baseline"):
                if scorer in r:
                    m = r[scorer]
                    line += (f" | {scorer[5:]} AUROC {m['auroc']:.3f} ({m['auroc_ci'][0]:.3f}-{m['auroc_ci'][1]:.3f})"
                             f" AUPRC {m['auprc']:.3f}")
            if "trajectory_minus_baseline" in r:
                d = r["trajectory_minus_baseline"]["auroc"]
                line += f" | trajectory − baseline AUROC {d['difference']:+.3f} ({d['ci'][0]:+.3f} to {d['ci'][1]:+.3f})"
            print(line)
        print(f"[cv] pooled report: {out / name}")


if __name__ == "__main__":
    main()
