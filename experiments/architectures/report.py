"""The table and the attention figure of experiments/architectures, from run.py's outputs.

    python experiments/architectures/report.py [--out outputs/architectures]

results.md: metric mean ± sd over seeds per task × family, parameters, training seconds; the generation
task `continue` in a table of its own (cross-entropy, lower is better).
attention.png: on one held-out reversal input, the sharpest head of each family trained on reversal
(seed 0): the encoder's full square, the decoder's triangle over `input <sep> output`, and the
encoder–decoder's cross-attention (output positions × input positions).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

from gptlab.analysis.attention import CMAP, NORM, sharpest_head, show_token  # noqa: E402
from gptlab.data.tasks import read_examples  # noqa: E402
from gptlab.tasks import model_from_checkpoint  # noqa: E402
from gptlab.tokenizers import tokenizer_from_spec  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FAMILIES = ("decoder", "encoder", "encoder_decoder")
METRIC = {"classify": "test accuracy", "seq2seq": "exact match"}
CANNOT = {("add", "encoder"), ("continue", "encoder")}  # run.py's CANNOT: tasks the family cannot express
GENERATION = "continue"


def cell(values: list[float]) -> str:
    """mean ± sample sd over seeds; one seed has no spread to show."""
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def missing(task: str, family: str, blanks: int) -> str:
    """The row of a cell with no runs: one the family cannot express, or one not run (yet)."""
    why = "– | cannot express it" if (task, family) in CANNOT else "0 | not run"
    return f"| {task} | {family} | {why} |" + " |" * blanks


def generation_table(rows: list[dict], baselines: dict) -> str:
    """The continue task: test cross-entropy of the target given the prefix, nats and bits per character."""
    groups = defaultdict(list)
    for r in rows:
        groups[r["family"]].append(r)
    lines = ["| task | family | seeds | test cross-entropy (nats/char) | bits/char | exact match (16 chars) | "
             "parameters | train s (mean) | steps × batch |", "|---|---|---|---|---|---|---|---|---|"]
    for family in FAMILIES:
        g = groups.get(family)
        if not g:
            lines.append(missing(GENERATION, family, 5))
            continue
        nats = [r["test_xent_nats"] for r in g]
        lines.append(f"| {GENERATION} | {family} | {len(g)} | {cell(nats)} | {cell([x / np.log(2) for x in nats])} | "
                     f"{cell([r['test'] for r in g])} | {g[0]['params']:,} | "
                     f"{np.mean([r['train_seconds'] for r in g]):.0f} | {g[0]['steps']} × 32 |")
    if "continue_unigram_nats" in baselines:
        u = baselines["continue_unigram_nats"]
        lines += ["", f"Baseline ignoring the prefix (character unigram of the training targets, same test "
                  f"split): {u:.3f} nats/char = {u / np.log(2):.3f} bits/char."]
    return "\n".join(lines) + "\n"


def table(rows: list[dict], baselines: dict) -> str:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["family"])].append(r)
    tasks = [t for t in dict.fromkeys(r["task"] for r in rows) if t != GENERATION]
    gen = generation_table([r for r in rows if r["task"] == GENERATION], baselines) \
        if any(r["task"] == GENERATION for r in rows) else ""
    if not tasks:
        return gen
    lines = ["| task | family | seeds | test (lengths ≤ L) | test_long (L+1…2L) | parameters | train s (mean) | steps × batch |",
             "|---|---|---|---|---|---|---|---|"]
    for task in tasks:
        for family in FAMILIES:
            g = groups.get((task, family))
            if not g:
                lines.append(missing(task, family, 4))
                continue
            long = cell([r["test_long"] for r in g]) if "test_long" in g[0] else "–"
            lines.append(f"| {task} | {family} | {len(g)} | {cell([r['test'] for r in g])} | {long} | "
                         f"{g[0]['params']:,} | {np.mean([r['train_seconds'] for r in g]):.0f} | "
                         f"{g[0]['steps']} × 32 |")
    if "majority" in baselines:
        lines += ["", f"Speaker attribution baselines (same test split, {baselines['n_test']} speeches, "
                  f"{len(baselines['labels'])} speakers): majority class {baselines['majority']:.3f}, "
                  f"bag-of-characters logistic regression {baselines['bag_of_chars_logreg']:.3f}."]
    return "\n".join(lines) + "\n" + ("\n" + gen if gen else "")


def example(data_dir: Path, length: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    meta = json.loads((data_dir / "meta.json").read_text())
    ids, index = read_examples(data_dir, "test")
    s0, sn, t0, tn = next(r for r in index if r[1] == length)
    return torch.tensor([ids[s0 : s0 + sn]]).long(), torch.tensor([ids[t0 : t0 + tn]]).long(), meta


def sharpest(maps: list[torch.Tensor]) -> tuple[np.ndarray, str]:
    w = torch.stack([m[0] for m in maps]).numpy()  # (layers, heads, T, S)
    layer, head = sharpest_head(w)
    return w[layer, head], f"layer {layer}, head {head}"


def last_ckpt(out: Path, family: str) -> Path:
    """The seed-0 reversal run of the main grid (the shortest, when a longer one sits beside it)."""
    runs = sorted((out / "runs").glob(f"reverse-{family}-s0*"), key=lambda p: len(p.name))
    return runs[0] / "checkpoints" / "last.ckpt"


@torch.no_grad()
def attention_figure(out: Path, path: Path) -> None:
    data_dir = out / "data" / "reverse" / "char"
    src, tgt, meta = example(data_dir, 8)
    tok, sep = tokenizer_from_spec(meta["tokenizer"]), meta["task"]["sep_id"]
    label = lambda ids: [show_token(tok.decode([i])) if i != sep else "<sep>" for i in ids]  # noqa: E731
    panels = []
    enc, _ = model_from_checkpoint(last_ckpt(out, "encoder"))
    w, where = sharpest(enc.attention_maps(src)[1])
    panels.append(("encoder self-attention", where, w, label(src[0].tolist()), label(src[0].tolist())))
    dec, _ = model_from_checkpoint(last_ckpt(out, "decoder"))
    seq = torch.cat([src, torch.tensor([[sep]]), tgt[:, :-2]], dim=1)  # input <sep> output without its last char, EOS
    w, where = sharpest(dec.attention_maps(seq)[1])
    panels.append(("decoder self-attention", where, w, label(seq[0].tolist()), label(seq[0].tolist())))
    ed, _ = model_from_checkpoint(last_ckpt(out, "encoder_decoder"))
    tgt_in = torch.cat([torch.tensor([[sep]]), tgt[:, :-2]], dim=1)
    w, where = sharpest(ed.attention_maps(src, tgt_in)["cross"])
    panels.append(("encoder–decoder cross-attention", where, w, label(tgt_in[0].tolist()), label(src[0].tolist())))
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.8))
    for ax, (title, where, w, rows, cols) in zip(axes, panels):
        im = ax.imshow(np.ma.masked_where(w == 0.0, w), cmap=CMAP, norm=PowerNorm(**NORM))
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_title(f"{title}\n(sharpest head: {where})", fontsize=10)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query")
    fig.colorbar(im, ax=axes, shrink=0.8, label="attention weight")
    fig.suptitle(f"Reversal of {tok.decode(src[0].tolist())!r} (held-out test input), seed-0 models")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "outputs" / "architectures"))
    ap.add_argument("--results", default=str(HERE), help="the folder of run.py's results.jsonl")
    args = ap.parse_args()
    results = Path(args.results)
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    base = results / "baselines.json"
    (results / "results.md").write_text(table(rows, json.loads(base.read_text()) if base.exists() else {}))
    print((results / "results.md").read_text())
    if results == HERE and list((Path(args.out) / "runs").glob("reverse-encoder_decoder-s0*")):
        attention_figure(Path(args.out), HERE / "attention.png")


if __name__ == "__main__":
    main()
