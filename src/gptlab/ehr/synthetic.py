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

shape="lifelong" (issue 16) grows the shapes of real exports: records start in childhood (age
0-15: well-child visits with CVX immunizations, SNOMED childhood asthma), run for decades through
sparse adult visits (gaps of years; conditions diagnosed at onset with their drugs), then the
same chain of stays. Each discharge also carries a second label, readmission within 30 days,
exactly Bernoulli(q(h)) (q logistic in age, heart failure, COPD, CKD, the stay's last
haemoglobin, an emergency admission and the number of stays). To keep both labels exact, a
death drawn for a discharge falls 30 days to H after it (never before a 30-day readmission) and
never before an earlier discharge's survived horizon. When a discharge draws both death and a
readmission, the readmission stay happens and death follows it. That stay is labelled like every
other, and so the label's risk is what its record shows, not the hidden draw: a 30-day
readmission stay with no new condition is that doomed stay with probability
π = p' / (p' + (1 − p')(1 − 0.05)^absent) (p' the previous discharge's death risk; `doomed_probability`),
so its death risk is π + (1 − π) p(h) and its readmission risk (1 − π) q(h). The last stay
(MAX_STAYS) is never followed by another, so its readmission risk is 0. (Labels version 1 left the
doomed stay unlabelled and kept p(h), q(h) on the others: an oracle that knew the hidden draw, which
no model of the records can; it put 22 % of labels out of any model's reach. Version 1 also labelled
a drawn readmission at the last stay that the record never shows.) The records are the same in both
versions. shape="adult" is the cohort of the figures before issue 16 (same seed → same data).

    python -m gptlab.ehr.synthetic OUT_DIR --n-patients 3000 --seed 0 [--shape lifelong]
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


SHAPES = ("adult", "lifelong")
VACCINES = ["IMMUNIZATION//CVX//08", "IMMUNIZATION//CVX//20", "IMMUNIZATION//CVX//03", "IMMUNIZATION//CVX//21",
            "IMMUNIZATION//CVX//10"]
FLU_VACCINE = "IMMUNIZATION//CVX//140"
ASTHMA = "DIAGNOSIS//SNOMED//195967001"
VISIT = "VISIT//OUTPATIENT"
READMIT_DAYS = 30.0


@dataclass
class Patient:
    rows: list[tuple[np.datetime64 | None, str, float | None]]
    labels: list[tuple[np.datetime64, bool, float]]  # (prediction_time, died within H, p)
    readmissions: list[tuple[np.datetime64, bool, float]] = None  # (prediction_time, readmitted ≤ 30 d, q)


def death_probability(age: float, conditions: np.ndarray, creatinine: float, albumin: float, stays: int) -> float:
    logit = (-3.0 + 0.04 * (age - 65) + sum(c[2] for c, on in zip(CONDITIONS, conditions) if on)
             + 0.9 * (creatinine - 1.2) - 1.2 * (albumin - 3.8) + 0.25 * (stays - 1))
    return float(1 / (1 + np.exp(-logit)))


def readmission_probability(age: float, conditions: np.ndarray, hemoglobin: float, emergency: bool,
                            stays: int) -> float:
    logit = (-2.2 + 0.02 * (age - 65) + 1.2 * conditions[HF] + 0.9 * conditions[4] + 0.8 * conditions[CKD]
             - 0.45 * (hemoglobin - 12.5) + 0.8 * emergency + 0.4 * (stays - 1))
    return float(1 / (1 + np.exp(-logit)))


def _labs(rng: np.random.Generator, t: np.datetime64, cond: np.ndarray, sick: float) -> list[tuple]:
    creat = float(np.exp(rng.normal(np.log(0.9 + 0.9 * cond[CKD] + 0.3 * cond[HF] + 0.2 * sick), 0.25)))
    alb = float(rng.normal(4.0 - 0.6 * cond[CANCER] - 0.3 * cond[HF] - 0.3 * sick, 0.35))
    hgb = float(rng.normal(13.5 - 1.5 * cond[CKD] - 1.0 * cond[CANCER], 1.4))
    names = list(LABS)
    return [(t, names[0], round(creat, 2)), (t, names[1], round(alb, 1)), (t, names[2], round(hgb, 1))]


def _stay(rng: np.random.Generator, t: np.datetime64, cond: np.ndarray) -> tuple[list[tuple], np.datetime64, list, bool]:
    """One hospital stay from admission at t: (rows, discharge time, the last labs, emergency?)."""
    sick = float(rng.random())
    elective = bool(rng.random() < 0.3)
    rows = [(t, ADMISSIONS[int(elective)], None)]
    dx_t = t + int(rng.integers(5, 60)) * MINUTE
    rows += [(dx_t, c[0], None) for c, on in zip(CONDITIONS, cond) if on]
    lab_t = t + int(rng.integers(60, 240)) * MINUTE
    rows += _labs(rng, lab_t, cond, sick)
    med_t = lab_t + int(rng.integers(30, 180)) * MINUTE
    rows += [(med_t, "MEDICATION//START//" + c[3], None) for c, on in zip(CONDITIONS, cond) if on and c[3]]
    los = days(1 + rng.exponential(2 + 2 * sick))
    last_labs = _labs(rng, t + los - int(rng.integers(120, 600)) * MINUTE, cond, sick)
    rows += last_labs
    rows.append((t + los, DISCHARGE, None))
    return rows, t + los, last_labs, not elective


def _early_life(rng: np.random.Generator, birth: np.datetime64, start_age: float, stay_age: float,
                onset: np.ndarray) -> list[tuple]:
    """Childhood visits from start_age to 18, then sparse adult visits until stay_age (gaps of
    years, some over five); a condition is diagnosed, with its drug, at the first visit after its
    onset age."""
    rows: list[tuple] = []
    age, told = start_age, np.zeros(len(CONDITIONS), dtype=bool)
    asthma = rng.random() < 0.1
    while age < stay_age:
        t = birth + days(age * 365.25)
        rows.append((t, VISIT, None))
        if age < 18:
            rows += [(t + 10 * MINUTE, v, None) for v in rng.choice(VACCINES, int(rng.integers(1, 3)), replace=False)]
            if asthma and rng.random() < 0.5:
                rows.append((t + 20 * MINUTE, ASTHMA, None))
        else:
            if rng.random() < 0.3:
                rows.append((t + 10 * MINUTE, FLU_VACCINE, None))
            new = (onset <= age) & ~told
            rows += [(t + 20 * MINUTE, c[0], None) for c, on in zip(CONDITIONS, new) if on]
            rows += [(t + 40 * MINUTE, "MEDICATION//START//" + c[3], None) for c, on in zip(CONDITIONS, new) if on and c[3]]
            told |= new
            if rng.random() < 0.4:
                rows.append(_labs(rng, t + 60 * MINUTE, told, 0.0)[0])
        age += (0.2 + rng.exponential(1.2)) if age < 18 else (0.3 + rng.exponential(2.5))
    return rows


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
        stay_rows, t, last_labs, _ = _stay(rng, t, cond)
        rows += stay_rows
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


def _outpatient(rng: np.random.Generator, t: np.datetime64, end: np.datetime64, cond: np.ndarray) -> list[tuple]:
    """Outpatient creatinine visits after a discharge at t, until end."""
    rows, visit = [], t + days(rng.exponential(75))
    while visit < end:
        rows.append(_labs(rng, visit, cond, 0.0)[0])
        visit = visit + days(7 + rng.exponential(75))
    return rows


def doomed_probability(p_before: float, absent: int) -> float:
    """P(a 30-day readmission stay is the one inside the previous discharge's death horizon | its
    record), when the stay shows no new condition: the previous discharge drew death with p_before,
    independently of the readmission; that stay is never followed by another and adds no condition,
    while a surviving one adds each of the `absent` conditions with NEW_CONDITION_PER_STAY (a new
    condition at the stay rules it out: probability 0)."""
    keep = (1 - NEW_CONDITION_PER_STAY) ** absent
    return p_before / (p_before + (1 - p_before) * keep)


def simulate_lifelong(rng: np.random.Generator, horizon_days: float) -> Patient:
    """A record from childhood through decades of sparse visits into the chain of stays (module doc)."""
    start_age, stay_age = float(rng.uniform(0, 15)), float(rng.uniform(35, 85))
    birth = np.datetime64("1935-01-01T00:00") + int(rng.integers(0, 50 * 365 * 1440)) * MINUTE
    present = rng.random(len(CONDITIONS)) < np.array([c[1] for c in CONDITIONS])
    onset = np.where(present, rng.uniform(18, stay_age, len(CONDITIONS)), np.inf)
    rows: list[tuple] = [(None, "GENDER//" + ("F" if rng.random() < 0.5 else "M"), None), (birth, "MEDS_BIRTH", None)]
    rows += _early_life(rng, birth, start_age, stay_age, onset)
    cond, deaths, readmissions = present.copy(), [], []
    t, alive_until = birth + days(stay_age * 365.25), np.datetime64("NaT")
    came_back = None  # p of the previous stay when this stay is its 30-day readmission, else None
    for stay in range(1, MAX_STAYS + 1):
        absent, before = int((~cond).sum()), cond.copy()
        cond |= rng.random(len(CONDITIONS)) < NEW_CONDITION_PER_STAY
        stay_rows, t, last, emergency = _stay(rng, t, cond)
        rows += stay_rows
        age = float((t - birth) / days(1)) / 365.25
        p = death_probability(age, cond, last[0][2], last[1][2], stay)
        q = readmission_probability(age, cond, last[2][2], emergency, stay)
        dies, readmit = bool(rng.random() < p), bool(rng.random() < q)
        doomed = doomed_probability(came_back, absent) if came_back is not None and (cond == before).all() else 0.0
        deaths.append((t, dies, doomed + (1 - doomed) * p))
        # the last stay is never followed by another: its record shows no readmission, whatever was drawn
        readmissions.append((t, readmit and stay < MAX_STAYS, (1 - doomed) * q * (stay < MAX_STAYS)))
        lo = t + days(READMIT_DAYS) if np.isnat(alive_until) else max(t + days(READMIT_DAYS), alive_until)
        death_t = lo + days(rng.uniform(0, 1) * float((t + days(horizon_days) - lo) / days(1)))
        nxt = t + days(rng.uniform(1, READMIT_DAYS)) if readmit else None
        if nxt is None and not dies and stay < MAX_STAYS and rng.random() < 0.45:
            nxt = t + days(rng.uniform(READMIT_DAYS, 1.5 * horizon_days))
        if stay == MAX_STAYS:
            nxt = None
        end = death_t if dies else (nxt if nxt is not None else t + days(1.5 * horizon_days))
        rows += _outpatient(rng, t, min(end, nxt) if nxt is not None else end, cond)
        if dies:
            if nxt is not None:  # a readmission inside the death's horizon, death after it
                extra, d2, last2, emergency2 = _stay(rng, nxt, cond)
                rows += extra
                death_t = min(max(death_t, d2 + days(1)), t + days(horizon_days))
                # labelled like every stay, with the risk its record shows: this readmission may be
                # this one (death certain) or one that survived p (module doc)
                age2 = float((d2 - birth) / days(1)) / 365.25
                doomed = doomed_probability(p, int((~cond).sum()))
                p2 = death_probability(age2, cond, last2[0][2], last2[1][2], stay + 1)
                q2 = readmission_probability(age2, cond, last2[2][2], emergency2, stay + 1) * (stay + 1 < MAX_STAYS)
                deaths.append((d2, True, doomed + (1 - doomed) * p2))
                readmissions.append((d2, False, (1 - doomed) * q2))
            rows.append((death_t, "MEDS_DEATH", None))
            break
        if nxt is None:
            break
        alive_until, t = t + days(horizon_days), nxt
        came_back = p if readmit else None
    return Patient(rows, deaths, readmissions)


LABELS_VERSION = 2  # lifelong: labels and risks as the record shows them (module doc); 1 knew a hidden draw


def cohort_version(n_patients: int, seed: int, horizon_days: float = 365.0, shape: str = "adult") -> str:
    """metadata/dataset.json's dataset_version: a cached cohort whose version differs is regenerated
    (prepare.meds_source)."""
    version = f"n{n_patients}-seed{seed}-h{horizon_days:g}d"
    return version if shape == "adult" else f"{version}-{shape}-labels{LABELS_VERSION}"


def generate_cohort(out_dir: str | Path, n_patients: int = 3000, seed: int = 0, horizon_days: float = 365.0,
                    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), shape: str = "adult") -> Path:
    """Write a MEDS dataset (data/, metadata/, tasks/death_<H>d.parquet and its oracle; lifelong
    also tasks/readmission_30d.parquet and its oracle) to out_dir."""
    if n_patients < 10:
        raise ValueError(f"n_patients must be >= 10 (three splits need subjects), got {n_patients}")
    if shape not in SHAPES:
        raise ValueError(f"synthetic cohort shape={shape!r}: choose one of {list(SHAPES)}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    simulate = simulate_patient if shape == "adult" else simulate_lifelong
    patients = [simulate(rng, horizon_days) for _ in range(n_patients)]
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
    names = {**LABS, **{c[0]: c[4] for c in CONDITIONS}, ASTHMA: "asthma (SNOMED)", VISIT: "outpatient visit",
             FLU_VACCINE: "influenza vaccine (CVX 140)"}
    pq.write_table(pa.table({"code": list(names), "description": list(names.values())}),
                   out / "metadata" / "codes.parquet")
    version = cohort_version(n_patients, seed, horizon_days, shape)
    (out / "metadata" / "dataset.json").write_text(json.dumps(
        {"dataset_name": "gptlab-synthetic", "dataset_version": version,
         "etl_name": "gptlab.ehr.synthetic", "meds_version": "0.3.3"}))
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    write_task(out, f"death_{horizon_days:g}d", [(s, lab) for s, pat in zip(ids, patients) for lab in pat.labels])
    if shape != "adult":
        write_task(out, f"readmission_{READMIT_DAYS:g}d",
                   [(s, lab) for s, pat in zip(ids, patients) for lab in pat.readmissions])
    return out


def write_task(out: Path, task: str, labels: list[tuple[int, tuple]]) -> None:
    """tasks/<task>.parquet (MEDS label schema) and tasks/<task>_oracle.parquet (the true risk)."""
    label_rows = [(int(s), t.astype("datetime64[us]"), d, p) for s, (t, d, p) in labels]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--n-patients", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--horizon-days", type=float, default=365.0)
    ap.add_argument("--shape", choices=SHAPES, default="adult")
    args = ap.parse_args()
    out = generate_cohort(args.out_dir, args.n_patients, args.seed, args.horizon_days, shape=args.shape)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
