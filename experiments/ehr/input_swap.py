"""Does a checkpoint's sampled risk respond to an input of p(h)? Swap it in real prompts and resample.

For the first K labels of a split, the prompt is rewritten in one place — the AGE token, or the
decile after the stay's last creatinine / albumin — and N trajectories are sampled for each
version. If the model used the input, deaths per N would move as p(h) says (older, higher
creatinine, lower albumin → more deaths).

    python experiments/ehr/input_swap.py <run>/checkpoints/last.ckpt data/prepared/meds/synthetic_ehr_n10000_seed0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.ehr.meds import Problems, iter_timelines, read_dataset, read_labels
from gptlab.ehr.risk import prompt_ids, sample_trajectories
from gptlab.ehr.synthetic import LABS
from gptlab.tokenizers import tokenizer_from_spec


def swapped(tok, ids: list[int], what: str, value: str) -> list[int]:
    """ids with the AGE token, or the decile after the last `what` lab code, replaced by `value`."""
    out = list(ids)
    if what == "age":
        return [tok.token_id(value) if tok.vocab[i].startswith("AGE//") else i for i in out]
    code = tok.code_ids(what)[-1]
    k = max(j for j, i in enumerate(out[:-1]) if i == code)
    out[k + 1] = tok.token_id(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("meds_dir")
    ap.add_argument("--split", default="tuning")
    ap.add_argument("--labels", type=int, default=12)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--max-len", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, ckpt = load_gpt_from_lightning_ckpt(args.ckpt)
    tok = tokenizer_from_spec(ckpt["tokenizer"])
    tables = read_dataset(args.meds_dir, Problems())
    tls = {tl.subject_id: tl for tl in iter_timelines(tables[args.split])}
    lab = read_labels(f"{args.meds_dir}/tasks/death_365d.parquet")
    sids, times = lab["subject_id"].to_numpy(), lab["prediction_time"].to_numpy().astype("datetime64[us]")
    rows = [r for r in range(len(sids)) if int(sids[r]) in tls][: args.labels]
    prompts = [prompt_ids(tok, tls[int(sids[r])], times[r], args.max_len) for r in rows]
    creat, alb = list(LABS)[:2]
    print(f"{args.ckpt}: {len(rows)} {args.split} prompts, {args.n} trajectories each\n| input | set to | deaths per {args.n} |\n|---|---|---|")
    for what, values in (("age", ["AGE//35-39", "AGE//60-64", "AGE//85-89"]), (creat, ["Q1", "Q5", "Q10"]),
                         (alb, ["Q1", "Q5", "Q10"])):
        for value in values:
            g = torch.Generator().manual_seed(0)
            deaths = [sample_trajectories(model, swapped(tok, p, what, value), n=args.n,
                                          outcome_ids=tok.ids_with_prefix(["MEDS_DEATH"]),
                                          stop_ids=tok.ids_with_prefix(["<TL_END>"]), token_minutes=tok.token_minutes,
                                          horizon_minutes=365 * 1440, max_new_tokens=64, generator=g).outcomes
                      for p in prompts]
            print(f"| {what.split('//')[-2] if '//' in what else what} | {value} | {np.mean(deaths):.1f} |")


if __name__ == "__main__":
    main()
