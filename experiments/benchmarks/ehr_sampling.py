"""Trajectory sampling speed of ehr_eval: labels one at a time (prompt_batch=1) vs labels nearest in
prompt length sampled as one batch (prompt_batch=k; risk.sample_trajectories_batch), alternated in one process.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/benchmarks/ehr_sampling.py <run>/checkpoints/last.ckpt \
        --task synthetic_death --labels 160 --batches 1 32 --rounds 2

Each round scores the same labels once per prompt_batch value (the same prompts, N trajectories
each, the same seed), timing only the sampling loop; the figure is the ratio of tokens per second
measured side by side, with the load average before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.ehr.evaluate import (
    eval_config,
    meds_source,
    run_data_config,
    score_labels,
    token_budget,
    trajectory_scores,
)
from gptlab.tokenizers import tokenizer_from_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("--task", default="synthetic_death")
    ap.add_argument("--split", default="tuning")
    ap.add_argument("--labels", type=int, default=160)
    ap.add_argument("--n", type=int, default=20, help="trajectories per label")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="prompt_batch values to compare")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--estimator", default="hazard")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, ckpt = load_gpt_from_lightning_ckpt(args.ckpt)
    tok = tokenizer_from_spec(ckpt["tokenizer"])
    cfg = eval_config(args.task, splits=[args.split], max_labels=args.labels, n_trajectories=args.n,
                      risk_estimator=args.estimator)
    data = score_labels(cfg, meds_source(run_data_config(Path(args.ckpt))))
    max_new = token_budget(cfg, tok, data, model.config.block_size)["max_new_tokens"]
    print(f"load average before: {os.getloadavg()}")
    speed: dict[int, list[float]] = {b: [] for b in args.batches}
    for r in range(args.rounds):
        for b in args.batches:
            _, _, wall, tokens = trajectory_scores({**cfg, "prompt_batch": b}, model, tok, data, max_new, torch.device("cpu"))
            speed[b].append(tokens / wall)
            print(f"round {r + 1} prompt_batch={b}: {tokens:,} tokens in {wall:.1f} s = {tokens / wall:,.0f} tokens/s "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
    base = args.batches[0]
    for b in args.batches[1:]:
        ratios = [s / s0 for s, s0 in zip(speed[b], speed[base])]
        print(f"prompt_batch={b} ÷ prompt_batch={base} tokens/s, per round: " + ", ".join(f"{x:.2f}" for x in ratios))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
