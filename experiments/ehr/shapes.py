"""What the issue-16 tokenizer fixes change on a cohort, without a model.

For one split of a MEDS cohort: tokens per timeline and the share of interval tokens with the old
layout (the top gap token repeated, `long_gaps=repeat`) and the bounded one; how many risk prompts
are cut to the context; and how far the newest AGE token of a prompt is from the true age at the
prediction time: the first-event age (before), or (after) the prefix's age at the first kept
token or an age-bin update inside the timeline, whichever comes last. Tokenizers are fitted on
the split itself: only token counts are measured here.

    python experiments/ehr/shapes.py data/prepared/meds/synthetic_ehr_lifelong_n10000_seed0 \
        --split tuning --task death_365d --max-len 128
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gptlab.ehr.meds import Problems, iter_timelines, read_dataset, read_labels
from gptlab.ehr.risk import prompt_ids
from gptlab.ehr.tokenizer import ETHOS_TIME_EDGES, EHRTokenizer

BOUNDED = (*ETHOS_TIME_EDGES, 525600, 1051200, 2628000)


def age_of_token(token: str) -> float:
    """The middle of an AGE bin in years (90+ → 92.5)."""
    lo, _, hi = token.removeprefix("AGE//").partition("-")
    return 92.5 if lo.endswith("+") else (int(lo) + int(hi) + 1) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("meds_dir")
    ap.add_argument("--split", default="tuning")
    ap.add_argument("--task", default="death_365d")
    ap.add_argument("--max-len", type=int, default=128)
    args = ap.parse_args()
    tls = {tl.subject_id: tl for tl in iter_timelines(read_dataset(args.meds_dir, Problems())[args.split])}
    old = EHRTokenizer.fit(tls.values(), min_count=5)
    new = EHRTokenizer.fit(tls.values(), min_count=5, time_edges=BOUNDED, long_gaps="bounded", age_at="window",
                           age_updates=True)
    for name, tok in (("repeat (before)", old), ("bounded (after)", new)):
        lens, time_share = [], []
        for tl in tls.values():
            ids = tok.encode_timeline(tl)
            lens.append(len(ids))
            time_share.append(sum(tok.vocab[i].startswith("TIME//") for i in ids) / len(ids))
        p = np.percentile(lens, [10, 50, 90, 99])
        print(f"{name}: tokens per timeline p10/50/90/99 = {p.astype(int).tolist()}, "
              f"interval tokens {np.mean(time_share):.1%} of all, longest {max(lens)}")
    labels = read_labels(Path(args.meds_dir) / "tasks" / f"{args.task}.parquet")
    sids, times = labels["subject_id"].to_numpy(), labels["prediction_time"].to_numpy().astype("datetime64[us]")
    rows = [k for k, s in enumerate(sids) if int(s) in tls]
    cut, err = 0, {"first_event (before)": [], "window (after)": []}
    for k in rows:
        tl = tls[int(sids[k])]
        true_age = float((times[k] - tl.birth) / np.timedelta64(1, "D")) / 365.25
        for name, tok in (("first_event (before)", old), ("window (after)", new)):
            ids = prompt_ids(tok, tl, times[k], args.max_len)
            newest = [tok.vocab[i] for i in ids if tok.vocab[i].startswith("AGE//")][-1]  # what the prompt last says
            err[name].append(abs(age_of_token(newest) - true_age))
        cut += len(new.encode_timeline(tl, until=times[k])) > args.max_len
    print(f"{len(rows)} {args.split} prompts of {args.task}: {cut} ({cut / len(rows):.0%}) cut to {args.max_len} tokens")
    for name, e in err.items():
        e = np.asarray(e)
        print(f"newest AGE token − true age at prediction, {name}: median |error| {np.median(e):.1f} y, "
              f"> 10 y in {np.mean(e > 10):.0%} of prompts")


if __name__ == "__main__":
    main()
