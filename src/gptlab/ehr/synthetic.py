"""A synthetic cohort in MEDS whose death risk is a known function of the history (the test bed).

Each patient has a sex, a birth date, chronic conditions (ICD-10, one as ICD-9 to exercise the
mapping) with their medications (drug names → ATC), and a chain of hospital stays with labs.
After every discharge the process is Markov in the history h:
  - with probability p(h) the patient dies within the horizon H (at a uniform time in (1 d, H)),
    seen at outpatient lab visits until then;
  - otherwise they survive H: outpatient visits continue and either a new admission starts after
    H, or follow-up ends (censored) at 1.5 H.
So the label "death within H of this discharge" is exactly Bernoulli(p(h)), and scoring with p(h)
gives the oracle AUROC that a model of the timelines can at best reach. p(h) depends on age,
conditions, the stay's last creatinine and albumin (only visible through value deciles) and the
number of stays so far.

    python -m gptlab.ehr.synthetic OUT_DIR --n-patients 3000 --seed 0
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# (MEDS code, prevalence at the first stay, log-odds of death, drug started, description)
CONDITIONS = [
    ("DIAGNOSIS//ICD//10//E119", 0.25, 0.3, "Metformin", "type 2 diabetes"),
    ("DIAGNOSIS//ICD//9//4019", 0.40, 0.1, "Lisinopril", "hypertension (ICD-9 401.9)"),
    ("DIAGNOSIS//ICD//10//I509", 0.15, 1.2, "Furosemide", "heart failure"),
    ("DIAGNOSIS//ICD//10//N183", 0.15, 0.6, None, "chronic kidney disease 3"),
    ("DIAGNOSIS//ICD//10//J449", 0.15, 0.7, "Tiotropium Bromide", "COPD"),
    ("DIAGNOSIS//ICD//10//C3490", 0.08, 2.0, "Carboplatin", "lung cancer"),
    ("DIAGNOSIS//ICD//10//F329", 0.15, 0.0, "Sertraline", "depression"),
    ("DIAGNOSIS//ICD//10//K219", 0.20, 0.0, "Omeprazole", "reflux"),
    ("DIAGNOSIS//ICD//10//E785", 0.30, -0.2, "Atorvastatin", "hyperlipidaemia"),
]
HF, CKD, CANCER = 2, 3, 5
LABS = {
    "LAB//creatinine//mg/dL": "Creatinine [Mass/volume] in Serum or Plasma",
    "LAB//albumin//g/dL": "Albumin [Mass/volume] in Serum or Plasma",
    "LAB//hemoglobin//g/dL": "Hemoglobin [Mass/volume] in Blood",
}
ADMISSIONS = ["HOSPITAL_ADMISSION//EMERGENCY", "HOSPITAL_ADMISSION//ELECTIVE"]
DISCHARGE = "HOSPITAL_DISCHARGE//HOME"
NEW_CONDITION_PER_STAY = 0.05
MAX_STAYS = 6
MINUTE = np.timedelta64(1, "m")


def days(x: float) -> np.timedelta64:
    return np.timedelta64(int(round(x * 1440)), "m")


@dataclass
class Patient:
    rows: list[tuple[np.datetime64 | None, str, float | None]]
    labels: list[tuple[np.datetime64, bool, float]]  # (prediction_time, died within H, p)


def death_probability(age: float, conditions: np.ndarray, creatinine: float, albumin: float, stays: int) -> float:
    logit = (-3.0 + 0.04 * (age - 65) + sum(c[2] for c, on in zip(CONDITIONS, conditions) if on)
             + 0.9 * (creatinine - 1.2) - 1.2 * (albumin - 3.8) + 0.25 * (stays - 1))
    return float(1 / (1 + np.exp(-logit)))


def _labs(rng: np.random.Generator, t: np.datetime64, cond: np.ndarray, sick: float) -> list[tuple]:
    creat = float(np.exp(rng.normal(np.log(0.9 + 0.9 * cond[CKD] + 0.3 * cond[HF] + 0.2 * sick), 0.25)))
    alb = float(rng.normal(4.0 - 0.6 * cond[CANCER] - 0.3 * cond[HF] - 0.3 * sick, 0.35))
    hgb = float(rng.normal(13.5 - 1.5 * cond[CKD] - 1.0 * cond[CANCER], 1.4))
    names = list(LABS)
    return [(t, names[0], round(creat, 2)), (t, names[1], round(alb, 1)), (t, names[2], round(hgb, 1))]


def simulate_patient(rng: np.random.Generator, horizon_days: float) -> Patient:
    start = np.datetime64("2015-01-01T00:00") + int(rng.integers(0, 5 * 365 * 1440)) * MINUTE
    age0 = float(rng.uniform(35, 90))
    birth = start - days(age0 * 365.25)
    rows: list[tuple] = [(None, "GENDER//" + ("F" if rng.random() < 0.5 else "M"), None), (birth, "MEDS_BIRTH", None)]
    cond = rng.random(len(CONDITIONS)) < np.array([c[1] for c in CONDITIONS])
    labels = []
    t = start
    for stay in range(1, MAX_STAYS + 1):
        cond |= rng.random(len(CONDITIONS)) < NEW_CONDITION_PER_STAY
        sick = float(rng.random())
        rows.append((t, ADMISSIONS[int(rng.random() < 0.3)], None))
        dx_t = t + int(rng.integers(5, 60)) * MINUTE
        rows += [(dx_t, c[0], None) for c, on in zip(CONDITIONS, cond) if on]
        lab_t = t + int(rng.integers(60, 240)) * MINUTE
        rows += _labs(rng, lab_t, cond, sick)
        med_t = lab_t + int(rng.integers(30, 180)) * MINUTE
        rows += [(med_t, "MEDICATION//START//" + c[3], None) for c, on in zip(CONDITIONS, cond) if on and c[3]]
        los = days(1 + rng.exponential(2 + 2 * sick))
        last_labs = _labs(rng, t + los - int(rng.integers(120, 600)) * MINUTE, cond, sick)
        rows += last_labs
        t = t + los
        rows.append((t, DISCHARGE, None))
        age = float((t - birth) / days(1)) / 365.25
        p = death_probability(age, cond, last_labs[0][2], last_labs[1][2], stay)
        dies = bool(rng.random() < p)
        labels.append((t, dies, p))
        end = t + days(rng.uniform(1, horizon_days) if dies else 1.5 * horizon_days)
        readmit = not dies and stay < MAX_STAYS and rng.random() < 0.45
        if readmit:
            end = t + days(horizon_days + rng.uniform(1, 0.5 * horizon_days))
        visit = t + days(rng.exponential(75))
        while visit < end:
            rows.append(_labs(rng, visit, cond, 0.0)[0])  # outpatient creatinine
            visit = visit + days(7 + rng.exponential(75))
        if dies:
            rows.append((end, "MEDS_DEATH", None))
            break
        if not readmit:
            break
        t = end
    return Patient(rows, labels)


def generate_cohort(out_dir: str | Path, n_patients: int = 3000, seed: int = 0, horizon_days: float = 365.0,
                    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> Path:
    """Write a MEDS dataset (data/, metadata/, tasks/death_<H>d.parquet and its oracle) to out_dir."""
    if n_patients < 10:
        raise ValueError(f"n_patients must be >= 10 (three splits need subjects), got {n_patients}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    patients = [simulate_patient(rng, horizon_days) for _ in range(n_patients)]
    ids = np.arange(1, n_patients + 1) + 100000
    n_train, n_tune = int(split_fractions[0] * n_patients), int(split_fractions[1] * n_patients)
    splits = ["train"] * n_train + ["tuning"] * n_tune + ["held_out"] * (n_patients - n_train - n_tune)
    for split in ("train", "tuning", "held_out"):
        sid, time, code, value = [], [], [], []
        for s, sp, pat in zip(ids, splits, patients):
            if sp != split:
                continue
            rows = sorted(pat.rows, key=lambda r: (r[0] is not None, r[0] if r[0] is not None else MINUTE * 0))
            for t, c, v in rows:
                sid.append(int(s))
                time.append(None if t is None else t.astype("datetime64[us]"))
                code.append(c)
                value.append(v)
        table = pa.table({"subject_id": pa.array(sid, pa.int64()),
                          "time": pa.array(time, pa.timestamp("us")),
                          "code": pa.array(code, pa.string()),
                          "numeric_value": pa.array(value, pa.float32())})
        (out / "data" / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / "data" / split / "0.parquet")
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"subject_id": pa.array(ids, pa.int64()), "split": splits}),
                   out / "metadata" / "subject_splits.parquet")
    names = {**LABS, **{c[0]: c[4] for c in CONDITIONS}}
    pq.write_table(pa.table({"code": list(names), "description": list(names.values())}),
                   out / "metadata" / "codes.parquet")
    (out / "metadata" / "dataset.json").write_text(json.dumps(
        {"dataset_name": "gptlab-synthetic", "dataset_version": f"n{n_patients}-seed{seed}-h{horizon_days:g}d",
         "etl_name": "gptlab.ehr.synthetic", "meds_version": "0.3.3"}))
    label_rows = [(int(s), t.astype("datetime64[us]"), d, p) for s, pat in zip(ids, patients) for t, d, p in pat.labels]
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    task = f"death_{horizon_days:g}d"
    n = len(label_rows)
    pq.write_table(pa.table({
        "subject_id": pa.array([r[0] for r in label_rows], pa.int64()),
        "prediction_time": pa.array([r[1] for r in label_rows], pa.timestamp("us")),
        "boolean_value": pa.array([r[2] for r in label_rows], pa.bool_()),
        "integer_value": pa.nulls(n, pa.int64()), "float_value": pa.nulls(n, pa.float64()),
        "categorical_value": pa.nulls(n, pa.string())}), out / "tasks" / f"{task}.parquet")
    pq.write_table(pa.table({
        "subject_id": pa.array([r[0] for r in label_rows], pa.int64()),
        "prediction_time": pa.array([r[1] for r in label_rows], pa.timestamp("us")),
        "probability": pa.array([r[3] for r in label_rows], pa.float64())}), out / "tasks" / f"{task}_oracle.parquet")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--n-patients", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--horizon-days", type=float, default=365.0)
    args = ap.parse_args()
    out = generate_cohort(args.out_dir, args.n_patients, args.seed, args.horizon_days)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
