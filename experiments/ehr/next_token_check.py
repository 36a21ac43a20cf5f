"""What a model says right after the prediction time, against what the records say.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/ehr/next_token_check.py <run>/checkpoints/last.ckpt \
        --task readmission_30d --split tuning --labels 300

For the first --labels labels of a task in a split: the record's actual next token after the prompt
(the timeline up to the prediction time, cut as ehr_eval cuts it) and the model's mean next-token
distribution at the end of the same prompt, for the tokens the records use most. A calibrated model
puts about the records' share on each; a gap between them says where its risk goes wrong.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.ehr.evaluate import meds_source, run_data_config
from gptlab.ehr.meds import Problems, iter_timelines, read_dataset, read_labels
from gptlab.ehr.risk import prompt_ids
from gptlab.tokenizers import tokenizer_from_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--task", default="readmission_30d", help="tasks/<task>.parquet in the run's MEDS folder")
    ap.add_argument("--split", default="tuning")
    ap.add_argument("--labels", type=int, default=300)
    ap.add_argument("--max-new-tokens", type=int, default=7, help="the budget ehr_eval used (the prompt keeps block − this)")
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, ckpt = load_gpt_from_lightning_ckpt(args.ckpt)
    model.eval()
    tok = tokenizer_from_spec(ckpt["tokenizer"])
    meds = meds_source(run_data_config(args.ckpt))
    timelines = {tl.subject_id: tl for tl in iter_timelines(read_dataset(meds, Problems())[args.split], Problems())}
    labels = read_labels(meds / "tasks" / f"{args.task}.parquet")
    sids = labels["subject_id"].to_numpy()
    times = labels["prediction_time"].to_numpy().astype("datetime64[us]")
    actual, predicted, n = Counter(), np.zeros(tok.vocab_size), 0
    for s, t in zip(sids, times):
        tl = timelines.get(int(s))
        if tl is None:
            continue
        full = tok.encode_with_times(tl)[0]
        actual[full[len(tok.encode_with_times(tl, until=t)[0])]] += 1
        prompt = prompt_ids(tok, tl, t, model.config.block_size - args.max_new_tokens)
        with torch.no_grad():
            predicted += model.forward_last(torch.tensor([prompt])).float().softmax(-1)[0].numpy()
        n += 1
        if n >= args.labels:
            break
    print(f"{n} {args.split} labels of {args.task}: the next token after the prompt")
    print(f"| token | records | model (mean probability) |\n|---|---|---|")
    for i, c in actual.most_common(args.top):
        print(f"| `{tok.vocab[i]}` | {c / n:.3f} | {predicted[i] / n:.3f} |")


if __name__ == "__main__":
    main()
