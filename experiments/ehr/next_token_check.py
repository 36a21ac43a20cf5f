"""What a model says right after the prediction time, against what the records say.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/ehr/next_token_check.py <run>/checkpoints/last.ckpt \
        --task synthetic_readmission --split tuning --labels 300

For the first --labels labels of an ehr_eval task (src/gptlab/conf_ehr_eval/task/<task>.yaml) in a
split: the record's actual next token after the prompt and the model's mean next-token distribution
at the end of the same prompt, for the tokens the records use most. Labels, token budget and prompts
are ehr_eval's own (gptlab.ehr.evaluate: score_labels, token_budget; risk.prompt_ids), so the
prompts are the ones it scores. A calibrated model puts about the records' share on each token; a
gap between them says where its risk goes wrong.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.ehr.evaluate import eval_config, meds_source, run_data_config, score_labels, token_budget
from gptlab.ehr.risk import prompt_ids
from gptlab.tokenizers import tokenizer_from_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--task", default="synthetic_readmission", help="an ehr_eval task config name")
    ap.add_argument("--split", default="tuning")
    ap.add_argument("--labels", type=int, default=300)
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, ckpt = load_gpt_from_lightning_ckpt(args.ckpt)
    tok = tokenizer_from_spec(ckpt["tokenizer"])
    cfg = eval_config(args.task, splits=[args.split], max_labels=args.labels)
    data = score_labels(cfg, meds_source(run_data_config(args.ckpt)))
    max_new = token_budget(cfg, tok, data, model.config.block_size)["max_new_tokens"]
    actual, predicted = Counter(), np.zeros(tok.vocab_size)
    for r in data["rows"]:
        tl, t = data["scored"][int(data["sids"][r])], data["times"][r]
        actual[tok.encode_with_times(tl)[0][len(tok.encode_with_times(tl, until=t)[0])]] += 1
        prompt = prompt_ids(tok, tl, t, model.config.block_size - max_new)
        with torch.no_grad():
            predicted += model.forward_last(torch.tensor([prompt])).float().softmax(-1)[0].numpy()
    n = len(data["rows"])
    print(f"{n} {args.split} labels of {args.task} (prompts cut to block − {max_new}): the next token after the prompt")
    print("| token | records | model (mean probability) |\n|---|---|---|")
    for i, c in actual.most_common(args.top):
        print(f"| `{tok.vocab[i]}` | {c / n:.3f} | {predicted[i] / n:.3f} |")


if __name__ == "__main__":
    main()
