"""How much of the oracle AUROC the tokens can carry: the oracle formula fed with what a prompt holds.

For every label of a split of a synthetic cohort, the inputs of p(h) (age, conditions, the stay's
last creatinine and albumin, number of stays) are read twice: exactly from the MEDS rows (this
reproduces the oracle; checked) and from the prompt's tokens, cut as ehr_eval cuts it
(block_size - max_new_tokens): value deciles → the mean train value of that decile, age → the
AGE bin's middle + the summed interval-token midpoints, conditions and stays → the ICD / admission
tokens left in the prompt. Each mix is scored with the same formula; the AUROC drop from the oracle
is a ceiling no model of these tokens can pass (up to the plug-in of a bin mean for E[p | bin]).
Rows "without ..." fix an input at a typical value: what a model that ignores it can reach.

    python experiments/ehr/information_ceiling.py data/prepared/meds/synthetic_ehr_n4000_seed0 --max-len 128 192
    python experiments/ehr/information_ceiling.py MEDS --split tuning --predictions <ehr_eval out>/predictions.csv
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pyarrow.parquet as pq

from gptlab.ehr import metrics as M
from gptlab.ehr.meds import Problems, iter_timelines, read_dataset, read_labels
from gptlab.ehr.risk import prompt_ids
from gptlab.ehr.synthetic import CONDITIONS, LABS, death_probability
from gptlab.ehr.tokenizer import EHRTokenizer

CREAT, ALB = list(LABS)[:2]
YEAR_MIN = 365.25 * 1440


def decile_means(tok: EHRTokenizer, train) -> dict[str, dict[int, float]]:
    """Mean train value of each decile token of creatinine and albumin."""
    out = {}
    for code in (CREAT, ALB):
        vals = np.concatenate([tl.values[[c == code for c in tl.codes]] for tl in train])
        q = np.array([tok.value_id(code, v) for v in vals])
        out[code] = {int(i): float(vals[q == i].mean()) for i in np.unique(q)}
    return out


def exact_inputs(tl, t: np.datetime64) -> dict:
    n = int(np.searchsorted(tl.times, t, side="right"))
    codes = tl.codes[:n]
    last = {c: float(tl.values[i]) for i, c in enumerate(codes) if c in (CREAT, ALB)}
    return {"age": float((t - tl.birth) / np.timedelta64(1, "D")) / 365.25,
            "conditions": np.array([c[0] in codes for c in CONDITIONS]),
            "creat": last[CREAT], "alb": last[ALB],
            "stays": sum(c.startswith("HOSPITAL_ADMISSION") for c in codes)}


def token_inputs(tok: EHRTokenizer, ids: list[int], means: dict) -> dict:
    """The same inputs as far as the prompt's tokens tell them."""
    words = [tok.vocab[i] for i in ids]
    age_tok = next(w for w in words if w.startswith("AGE//"))
    lo = 90.0 if age_tok == "AGE//90+" else float(age_tok.split("//")[1].split("-")[0])
    elapsed = sum(tok.token_minutes[i] for i in ids) / YEAR_MIN
    cond_tokens = [tok.vocab[tok.code_ids(c[0])[-1]] for c in CONDITIONS]
    last = {}
    for k, w in enumerate(words[:-1]):
        if w in (tok.vocab[tok.code_ids(CREAT)[-1]], tok.vocab[tok.code_ids(ALB)[-1]]):
            code = CREAT if w == tok.vocab[tok.code_ids(CREAT)[-1]] else ALB
            last[code] = means[code][ids[k + 1]]
    return {"age": lo + tok.age_bin_years / 2 + elapsed, "conditions": np.array([w in words for w in cond_tokens]),
            "creat": last.get(CREAT, 1.2), "alb": last.get(ALB, 3.8),
            "stays": sum(w.startswith("HOSPITAL_ADMISSION") for w in words)}


def p_of(x: dict) -> float:
    return death_probability(x["age"], x["conditions"], x["creat"], x["alb"], x["stays"])


def input_weights(tls: dict, predictions: str) -> None:
    """Which inputs of p(h) a model's risk follows: least squares of logit(risk) on the exact inputs,
    for the model's trajectory risk (clipped to [0.01, 0.99], as N counts can be 0), its one-step
    log-probability (the log of a small p is its logit up to a constant) and the oracle."""
    import csv

    rows = list(csv.DictReader(open(predictions)))
    xs = [exact_inputs(tls[int(r["subject_id"])], np.datetime64(r["prediction_time"])) for r in rows]
    X = np.array([[1.0, x["age"] - 65, *x["conditions"], x["creat"] - 1.2, x["alb"] - 3.8, x["stays"] - 1] for x in xs])

    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(p, 0.01, 0.99)
        return np.log(p / (1 - p))

    col = {k: np.array([float(r[k]) for r in rows]) for k in ("risk_trajectory", "risk_one_step", "risk_oracle")}
    fits = {"model: logit(trajectory risk)": logit(col["risk_trajectory"]),
            "model: log(one-step P(death))": np.log(np.clip(col["risk_one_step"], 1e-12, None)),
            "oracle: logit(p)": logit(col["risk_oracle"])}
    names = ["const", "age", *(c[4].split(" (")[0] for c in CONDITIONS), "creat", "alb", "stays"]
    print(f"\n{predictions}: {len(rows)} predictions\n| fit | " + " | ".join(names) + " |\n" + "|---" * (len(names) + 1) + "|")
    true = [-3.0, 0.04, *(c[2] for c in CONDITIONS), 0.9, -1.2, 0.25]
    print("| p(h) as generated | " + " | ".join(f"{v:+.2f}" for v in true) + " |")
    for name, target in fits.items():
        b = np.linalg.lstsq(X, target, rcond=None)[0]
        print(f"| {name} | " + " | ".join(f"{v:+.2f}" for v in b) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("meds_dir")
    ap.add_argument("--split", default="held_out")
    ap.add_argument("--max-len", type=int, nargs="+", default=[128], help="prompt lengths (block_size - max_new_tokens)")
    ap.add_argument("--n-trajectories", type=int, nargs="+", default=[20, 50, 100],
                    help="also score the oracle as a fraction of N Bernoulli(p) draws, as sampled trajectories would")
    ap.add_argument("--predictions", help="an ehr_eval predictions.csv of this split: which inputs its risk follows")
    args = ap.parse_args()
    tables = read_dataset(args.meds_dir, Problems())
    train = list(iter_timelines(tables["train"]))
    tok = EHRTokenizer.fit(train)  # the default tokenizer config (conf/data/tokenizer/ehr.yaml)
    means = decile_means(tok, train)
    tls = {tl.subject_id: tl for tl in iter_timelines(tables[args.split])}
    labels = read_labels(f"{args.meds_dir}/tasks/death_365d.parquet")
    sids, times = labels["subject_id"].to_numpy(), labels["prediction_time"].to_numpy().astype("datetime64[us]")
    y_all = labels["boolean_value"].to_numpy(zero_copy_only=False).astype(bool)
    rows = [r for r in range(len(sids)) if int(sids[r]) in tls]
    y = y_all[rows]
    full_len = max(len(tok.encode_timeline(tls[int(sids[r])], until=times[r])) for r in rows)
    scores: dict[str, list[float]] = {}
    cut_stats = {}
    for max_len in [*args.max_len, full_len]:
        n_cut = n_lost_stays = n_lost_cond = 0
        for r in rows:
            tl = tls[int(sids[r])]
            ex = exact_inputs(tl, times[r])
            ids = prompt_ids(tok, tl, times[r], max_len)
            tk = token_inputs(tok, ids, means)
            n_cut += len(ids) < len(tok.encode_timeline(tl, until=times[r]))
            n_lost_stays += tk["stays"] < ex["stays"]
            n_lost_cond += bool((ex["conditions"] & ~tk["conditions"]).any())
            mixes = {
                "oracle (exact inputs)": ex,
                "labs as deciles": {**ex, "creat": tk["creat"], "alb": tk["alb"]},
                "age from tokens": {**ex, "age": tk["age"]},
                "stays counted in prompt": {**ex, "stays": tk["stays"]},
                "conditions in prompt": {**ex, "conditions": tk["conditions"]},
                "all from tokens": tk,
                "without age (fixed at 65)": {**ex, "age": 65.0},
                "without the last labs (fixed at 1.2, 3.8)": {**ex, "creat": 1.2, "alb": 3.8},
                "without age and the last labs": {**ex, "age": 65.0, "creat": 1.2, "alb": 3.8},
            }
            for name, x in mixes.items():
                uncut = name.startswith(("oracle", "labs", "without"))  # these do not depend on the cut
                if uncut and max_len != args.max_len[0]:
                    continue
                scores.setdefault(name if uncut else f"{name}, prompt ≤ {max_len}",
                                  []).append(p_of(x))
        cut_stats[max_len] = {"prompts_cut": n_cut, "stays_lost": n_lost_stays, "conditions_lost": n_lost_cond}
    o = pq.read_table(f"{args.meds_dir}/tasks/death_365d_oracle.parquet")["probability"].to_numpy()[rows]
    gap = float(np.abs(np.array(scores["oracle (exact inputs)"]) - o).max())
    print(f"{args.split}: {len(rows)} labels, {int(y.sum())} positive; recomputed oracle vs file: max |Δp| = {gap:.1e}")
    print(f"longest prompt {full_len} tokens; per prompt cut: {json.dumps(cut_stats)}")
    base = M.auroc(y, np.array(scores["oracle (exact inputs)"]))
    print("| inputs of p(h) | AUROC (95% CI, patients resampled) | ÷ oracle |\n|---|---|---|")
    groups = np.array([int(sids[r]) for r in rows])
    for name, s in scores.items():
        s = np.array(s)
        lo, hi = M.bootstrap_ci(M.auroc, y, s, 1000, 0, groups=groups)
        print(f"| {name} | {M.auroc(y, s):.3f} ({lo:.3f}–{hi:.3f}) | {M.auroc(y, s) / base:.3f} |")
    rng = np.random.default_rng(0)
    p = np.array(scores["oracle (exact inputs)"])
    for n in args.n_trajectories:  # the sampling noise of risk = outcomes / N, at the true p (20 draws)
        a = [M.auroc(y, rng.binomial(n, p) / n) for _ in range(20)]
        print(f"| oracle p counted in {n} Bernoulli draws (mean ± sd of 20 repeats) | {np.mean(a):.3f} ± {np.std(a):.3f} "
              f"| {np.mean(a) / base:.3f} |")
    if args.predictions:
        input_weights(tls, args.predictions)


if __name__ == "__main__":
    main()
