"""Figures for experiments/causal_vs_bidirectional that the generic report does not draw.

    python experiments/causal_vs_bidirectional/compare.py OUT CAUSAL_RUN BIDIRECTIONAL_RUN MLM_RUN [MORE_RUNS...]

1. attention.png: the most focused head of each of the three models on the same prompt, side by side.
2. fill_in.png + results.json: hide 15% of the validation tokens (BERT's masking, fixed seed) and
   ask each model for them. The MLM model sees both sides of the gap; the causal model can only
   predict a hidden token from the text before it (its next-token prediction at the position
   before), which is what a decoder does. The bidirectional next-token model is scored honestly
   at the last position of each window, where no future token is there to copy. MORE_RUNS (e.g.
   a longer causal run) are scored here too.
3. samples.md: a sample from each next-token model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

from gptlab.analysis.attention import CMAP, NORM, attention_weights, sharpest_head, show_token  # noqa: E402
from gptlab.analysis.report import pick_checkpoint  # noqa: E402
from gptlab.checkpoint import load_gpt_from_lightning_ckpt  # noqa: E402
from gptlab.data.datamodule import FixedWindows  # noqa: E402
from gptlab.entrypoints.analyze import run_datamodule  # noqa: E402
from gptlab.generation import Decoding, generate_text  # noqa: E402
from gptlab.lit_module import mask_tokens  # noqa: E402
from gptlab.tokenizers import tokenizer_from_spec  # noqa: E402

PROMPT = "ROMEO:\nBut soft, what light"  # short enough to read every token on the axes


def load(run: Path):
    model, ckpt = load_gpt_from_lightning_ckpt(pick_checkpoint(run, "best"))
    return model, {**ckpt["hyper_parameters"], "steps": ckpt["global_step"]}, tokenizer_from_spec(ckpt["tokenizer"])


@torch.no_grad()
def fill_in(models: dict, val_ids: np.ndarray, vocab: int, block: int) -> dict[str, dict[str, float]]:
    windows = FixedWindows(val_ids, block, 12, 20)
    hits = {name: [0, 0] for name in models}
    for k in range(len(windows)):
        x, _ = windows[k]
        inputs, targets = mask_tokens(x, 0.15, vocab, vocab, torch.Generator().manual_seed(k))
        hidden = targets != -1
        for name, (model, hp) in models.items():
            if hp.get("objective") == "mlm":
                pred = model(inputs)[0].argmax(-1)
                ok = pred[hidden] == targets[hidden]
            elif model.config.causal:  # token t from the prediction at t-1 (left context only)
                pred = model(x)[0].argmax(-1)
                h = hidden[:, 1:]
                ok = pred[:, :-1][h] == x[:, 1:][h]
            else:  # no honest fill-in for a model that reads its target: score its last position
                pred = model(x[:, :-1])[0][:, -1].argmax(-1)
                ok = pred == x[:, -1]
            hits[name][0] += int(ok.sum())
            hits[name][1] += int(ok.numel())
    return {name: {"accuracy": h / n, "predictions": n} for name, (h, n) in hits.items()}


def kind(model, hparams) -> str:
    attention = "causal" if model.config.causal else "bidirectional"
    return f"{attention} ({'masked LM' if hparams.get('objective') == 'mlm' else 'next token'})"


def main(out: str, causal: str, bidir: str, mlm: str, *more: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)  # before the work: the figures and results go here
    loaded = {}
    for run in (causal, bidir, mlm, *more):
        model, hp, tok = load(Path(run))
        loaded[f"{kind(model, hp)}, {hp['steps']:,} steps"] = (model, hp, tok, Path(run))
    names = list(loaded)

    fig, axes = plt.subplots(1, 3, figsize=(19, 7))
    ids = tok.encode(PROMPT)
    labels = [show_token(tok.decode([i])) for i in ids]
    for ax, name in zip(axes, names[:3]):
        w = attention_weights(loaded[name][0], ids)
        layer, head = sharpest_head(w)
        im = ax.imshow(np.ma.masked_where(w[layer, head] == 0, w[layer, head]), cmap=CMAP,
                       norm=PowerNorm(**NORM), interpolation="nearest")
        ax.set_xticks(range(len(ids)), labels, fontsize=9, family="monospace")
        ax.set_yticks(range(len(ids)), labels, fontsize=9, family="monospace")
        ax.set(title=f"{name}\nlayer {layer}, head {head} (most focused)", xlabel="key token", ylabel="query token")
    fig.colorbar(im, ax=axes, fraction=0.015, label="attention weight (√ scale)")
    fig.savefig(out_dir / "attention.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    dm = run_datamodule(Path(causal), None)
    block = loaded[names[0]][0].config.block_size
    scores = fill_in({n: (m, hp) for n, (m, hp, _, _) in loaded.items()}, np.asarray(dm.val_ids), tok.vocab_size, block)
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.9 * len(names)))
    bars = ax.barh([n.replace(", ", "\n") for n in names], [scores[n]["accuracy"] for n in names],
                   color=[f"C{i}" for i in range(len(names))])
    ax.bar_label(bars, fmt="%.3f", padding=3)
    ax.set(xlim=(0, 1), xlabel="accuracy (argmax = the hidden character)",
           title="Restoring hidden validation characters (15% hidden, BERT masking)")
    fig.text(0.5, 0.01, "causal: predicted from the text before the gap · masked LM: from both sides · "
             "bidirectional next-token: last position of each window (no future to copy)",
             ha="center", va="bottom", fontsize=8, color="0.3")
    ax.invert_yaxis()
    fig.tight_layout(rect=(0, 0.4 / (1.4 + 0.9 * len(names)), 1, 1))
    fig.savefig(out_dir / "fill_in.png", dpi=110)
    plt.close(fig)
    (out_dir / "results.json").write_text(json.dumps(scores, indent=1) + "\n")

    texts = ["# Samples of the two next-token models", "",
             "Temperature 0.8, seed 1337, 200 characters after the prompt (the bidirectional model re-reads the "
             "whole window at every step, as it was trained).", ""]
    for name in names[:2]:
        model, _, tok, _ = loaded[name]
        text = "ROMEO:" + generate_text(model, tok, "ROMEO:", Decoding(max_new_tokens=200, seed=1337, temperature=0.8))
        texts += [f"## {name}", "", "```", text, "```", ""]
    (out_dir / "samples.md").write_text("\n".join(texts))
    print(json.dumps(scores, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
