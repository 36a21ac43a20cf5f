"""The run report: report.md and its PNGs, written into <run>/report/ in one piece.

Everything is written to a temporary sibling folder first and renamed into place at the end, so
an interrupted or failing analysis never leaves a partial report over a complete one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.analysis import attention as att
from gptlab.analysis import curves, probes, samples
from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.errors import MissingFile, UserError
from gptlab.model import GPT
from gptlab.tokenizers import Tokenizer, tokenizer_from_spec


def pick_checkpoint(run_dir: Path, which: str = "best") -> Path:
    """which = "best" (the best-*.ckpt ModelCheckpoint kept, else last), "last", or a path."""
    if which not in ("best", "last"):
        path = Path(which)
        if not path.is_file():
            raise MissingFile(f"ckpt={which!r}: no such file (or give 'best' or 'last')")
        return path
    folder = run_dir / "checkpoints"
    best = sorted(folder.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = folder / "last.ckpt"
    if which == "best" and best:
        return best[-1]
    if last.is_file():
        return last
    raise MissingFile(f"{folder}: no {'best*.ckpt or ' if which == 'best' else ''}last.ckpt to analyse")


def _table(rows: list[dict[str, str]]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]).replace("|", "\\|") for h in head) + " |" for r in rows]
    return "\n".join(lines)


def _code(text: str) -> str:
    return "```\n" + text.replace("```", "` ` `") + "\n```"


@dataclass
class Loaded:
    """A run's model as the report needs it."""

    run_dir: Path
    model: GPT
    tok: Tokenizer
    hparams: dict[str, Any]
    ckpt_path: Path

    @property
    def objective(self) -> str:
        return self.hparams.get("objective", "clm")


def _load(run_dir: Path, which: str) -> Loaded:
    path = pick_checkpoint(run_dir, which)
    model, ckpt = load_gpt_from_lightning_ckpt(path)
    if not ckpt.get("tokenizer"):
        raise UserError(f"{path} holds no tokenizer spec; it was not written by gptlab's train.py")
    return Loaded(run_dir, model, tokenizer_from_spec(ckpt["tokenizer"]), ckpt.get("hyper_parameters", {}), path)


@dataclass
class ReportOptions:
    """What goes into a run report (conf/analyze.yaml names the same settings).

    labels: legend labels, one per run (default: the overrides that tell runs apart).
    train_text: training text for the samples' "known words" statistic (None: not computed).
    strategies: named decoding settings for the samples (None: samples.STRATEGIES).
    attention_layer/attention_head: the head enlarged (None, None: the most focused one).
    neighbour_queries: how many frequent tokens are listed with their embedding neighbours.
    position_windows: validation windows averaged for the loss by position.
    log_scale: also draw the curves on log-log axes.
    """

    labels: list[str] | None = None
    train_text: str | None = None
    prompt: str = "ROMEO:\nBut soft, what light through yonder window breaks?"
    max_new_tokens: int = 300
    temperatures: Sequence[float] = field(default_factory=lambda: list(samples.TEMPERATURES))
    strategies: dict[str, dict[str, Any]] | None = None
    attention_layer: int | None = None
    attention_head: int | None = None
    neighbour_queries: int = 16
    position_windows: int = 1600
    log_scale: bool = False
    seed: int = 1337


def write_report(
    run_dir: str | Path,
    val_ids_for: Callable[[Path], np.ndarray],
    *,
    compare: Sequence[str | Path] = (),
    out_dir: str | Path | None = None,
    ckpt: str = "best",
    options: ReportOptions | None = None,
) -> Path:
    """Analyse the run in run_dir (its logs and a checkpoint); returns the report folder.

    val_ids_for(run_dir) gives that run's validation token ids. compare: more runs (or folders of
    runs, e.g. a Hydra multirun) whose curves and per-position losses are overlaid on this one's.
    """
    o = options or ReportOptions()
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / "report"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the report is meant to be read
    try:
        main = _load(run_dir, ckpt)
        md = _header(main)
        curve_md, runs = _curves_section(run_dir, compare, o.labels, o.log_scale, tmp)
        md += curve_md
        md += _attention_section(main, o.prompt, o.attention_layer, o.attention_head, tmp)
        md += _samples_section(main, o.prompt, o.max_new_tokens, o.temperatures,
                               o.strategies or samples.STRATEGIES, o.train_text, o.seed, tmp)
        md += _position_section(main, [(runs[0].label, main), *_loadable(runs[1:], ckpt)], val_ids_for,
                                o.position_windows, tmp)
        md += _embedding_section(main, val_ids_for(run_dir), o.neighbour_queries, tmp)
        (tmp / "report.md").write_text("\n".join(md), encoding="utf-8")
        if out_dir.exists():  # swap: the old report is removed only once the new one is complete
            old = out_dir.with_name(f".{out_dir.name}-old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def _loadable(runs: list[curves.RunLog], which: str) -> list[tuple[str, Loaded]]:
    """The compared runs that have a checkpoint (a run still at its first validation may not)."""
    out = []
    for run in runs:
        try:
            out.append((run.label, _load(run.path, which)))
        except FileNotFoundError:
            continue
    return out


def _header(m: Loaded) -> list[str]:
    cfg = m.model.config
    return [f"# Report: `{m.run_dir}`", "",
            f"- checkpoint: `{m.ckpt_path.name}` (from {m.hparams.get('init_from', 'scratch')})",
            f"- model: {cfg.n_layer} layers × {cfg.n_head} heads × {cfg.n_embd} wide, context {cfg.block_size}, "
            f"{m.model.num_params() / 1e6:.2f}M parameters, attention {_kind(m)}, objective {m.objective}",
            f"- tokenizer: {m.tok.kind}, {m.tok.vocab_size} tokens", ""]


def _kind(m: Loaded) -> str:
    return "causal (decoder-only)" if m.model.config.causal else "bidirectional (encoder-style)"


def _every(run: curves.RunLog) -> str:
    """How often the run logged its train loss, from the rows themselves."""
    series = run.metrics.get(curves.TRAIN)
    k = curves.log_interval(series) if series is not None else None
    if k is None:
        return "once"
    return "every optimizer step" if k == 1 else f"every {k} optimizer steps (trainer.log_every_n_steps)"


def _curves_section(run_dir: Path, compare: Sequence[str | Path], labels: list[str] | None, log_scale: bool,
                    out: Path) -> tuple[list[str], list[curves.RunLog]]:
    runs = curves.load_runs([run_dir, *compare], labels)
    main = runs[:1]
    curves.plot_curves(main, out / "curves.png")
    md = ["## Loss curves", "",
          f"Train loss is logged {_every(main[0])} (faint; the solid line is its bias-corrected exponential "
          "moving average), validation loss at each evaluation on fixed windows; the learning rate is beneath. "
          "Left against optimizer steps, right against tokens seen (batch × context × accumulation × devices).",
          "", _table(curves.summary_rows(main)), "", "![loss curves](curves.png)", ""]
    if log_scale:
        curves.plot_curves(main, out / "curves_log.png", log_scale=True)
        md += ["The same on log-log axes:", "", "![loss curves, log scale](curves_log.png)", ""]
    if compare:
        curves.plot_curves(runs, out / "curves_compare.png", log_scale=log_scale)
        md += ["### Compared runs", "", _table(curves.summary_rows(runs)), "",
               "![compared loss curves](curves_compare.png)", ""]
    if curves.plot_metric(runs, "val/masked_acc", out / "masked_accuracy.png", "masked-token accuracy",
                          "Masked-token accuracy on validation (15% of positions hidden)"):
        md += ["Masked-LM runs are scored on the tokens they must restore:", "",
               "![masked-token accuracy](masked_accuracy.png)", ""]
    return md, runs


def _attention_section(m: Loaded, prompt: str, layer: int | None, head: int | None, out: Path) -> list[str]:
    ids = m.tok.encode(prompt)[: m.model.config.block_size]
    weights = att.attention_weights(m.model, ids)
    if layer is None or head is None:
        layer, head = att.sharpest_head(weights)
        why = "the head with the lowest mean attention entropy, i.e. the most focused one"
    else:
        why = "chosen in the config"
    att.plot_attention_grid(weights, out / "attention_grid.png",
                            f"Attention of every layer and head, {_kind(m)} model, prompt of {len(ids)} tokens")
    att.plot_head(weights[layer, head], [m.tok.decode([i]) for i in ids], out / "attention_head.png",
                  f"Layer {layer}, head {head}: row = query token, column = the tokens it reads")
    upper = float(np.triu(weights, k=1).sum(-1).mean())
    T = len(ids)
    uniform = float(np.mean(np.log(np.arange(1, T + 1)))) if m.model.config.causal else float(np.log(T))
    entropy = att.row_entropy(weights)
    return ["## Attention", "", "Prompt:", "", _code(prompt), "",
            "Each panel is one head: row i shows how query position i spreads its attention (rows sum to 1) "
            "over the key positions; white cells are exactly zero. "
            + ("The causal mask makes the upper triangle (later tokens) empty." if m.model.config.causal else
               "Without the causal mask every position may read every other, later ones included."),
            f"Mean attention weight on later tokens: {upper:.3f}.", "",
            "![attention, all heads](attention_grid.png)", "",
            f"Enlarged: layer {layer}, head {head} ({why}).", "", "![one attention head](attention_head.png)", "",
            f"Mean row entropy per head (nats; attending uniformly would give {uniform:.2f}, lower = sharper):", "",
            _table([{"layer": str(li), **{f"head {h}": f"{e:.2f}" for h, e in enumerate(row)}}
                    for li, row in enumerate(entropy)]), ""]


def _samples_section(m: Loaded, prompt: str, max_new_tokens: int, temperatures: Sequence[float],
                     strategies: dict[str, dict[str, Any]], train_text: str | None, seed: int,
                     out: Path) -> list[str]:
    md = ["## Samples", ""]
    if m.objective == "mlm":
        return md + ["Not drawn: a masked-LM is trained to restore hidden tokens, not to continue text.", ""]
    known = samples.vocabulary(train_text) if train_text else None
    intro = (f"Seed {seed} for every sample; {max_new_tokens} new tokens. Measured on the new text only: "
             "distinct 4-grams is the share of its 4-character sequences that differ (low = loops); known "
             "words, the share of its words found in the training text.")
    if not m.model.config.causal:
        intro += " This model was trained without the causal mask: at generation time there is no future to read."
    whole_vocab = [n for n, kw in strategies.items() if (kw.get("top_k") or 0) >= m.tok.vocab_size]
    for name, title, got, note in (
        ("samples_temperature", "Temperature",
         samples.temperature_samples(m.model, m.tok, prompt, max_new_tokens, temperatures, seed), ""),
        ("samples_strategy", "Decoding strategy",
         samples.strategy_samples(m.model, m.tok, prompt, max_new_tokens, strategies, seed),
         f"({', '.join(whole_vocab)}: k is at least the vocabulary size, {m.tok.vocab_size}, so every token is "
         "kept and the sample equals plain sampling at the same temperature and seed.)" if whole_vocab else ""),
    ):
        samples.plot_sample_grid(got, out / f"{name}.png", f"{title}: {max_new_tokens} tokens after the prompt")
        rows = [{"setting": k, **{s: f"{v:.2f}" for s, v in samples.text_stats(t[len(prompt):], known).items()}}
                for k, t in got.items()]
        md += [f"### {title}", "", intro, "", _table(rows), "", *([note, ""] if note else []),
               f"![samples by {title.lower()}]({name}.png)", ""]
        for k, t in got.items():
            md += [f"**{k}**", "", _code(t), ""]
    return md


def _position_section(m: Loaded, models: list[tuple[str, Loaded]], val_ids_for: Callable[[Path], np.ndarray],
                      windows: int, out: Path) -> list[str]:
    md = ["## Loss by position in the context", ""]
    batches = max(1, -(-windows // 32))
    pos = {label: probes.per_position_loss(r.model, val_ids_for(r.run_dir), 32, batches) for label, r in models
           if r.objective == "clm"}
    if not pos:
        return md + ["Not measured: no next-token (clm) model among the runs.", ""]
    probes.plot_position_loss(pos, out / "position_loss.png", "Validation loss by position in the context window")
    marks = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if p <= m.model.config.block_size]
    return md + [f"Next-token loss averaged at each position over {32 * batches:,} evenly spaced validation windows: position t predicts "
                 "token t+1 having seen t+1 tokens. A causal model's loss should fall as the context grows; "
                 "a bidirectional one reads its target directly everywhere except the last position.", "",
                 _table([{"run": k, **{f"ctx {p}": f"{v[p - 1]:.3f}" for p in marks}} for k, v in pos.items()]),
                 "", "![loss by position](position_loss.png)", ""]


def _embedding_section(m: Loaded, val_ids: np.ndarray, queries: int, out: Path) -> list[str]:
    counts = probes.token_counts(val_ids, m.tok.vocab_size)
    by_count = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    frequent = by_count[: max(queries, 1)]
    nn = probes.nearest_neighbours(m.model, frequent, k=5, vocab_size=m.tok.vocab_size)

    def show(i: int) -> str:
        return "`" + att.show_token(m.tok.decode([i])).replace("`", "'") + "`"

    probes.plot_embedding_pca(m.model, m.tok, by_count[:80], out / "embeddings_pca.png",
                              f"Token embeddings of the {len(by_count[:80])} most frequent tokens (PCA)")
    return ["## Token embeddings: nearest neighbours", "",
            f"The {len(frequent)} most frequent validation tokens and the 5 tokens whose (tied) embeddings are "
            "closest by cosine similarity: tokens the model has learned to treat alike.", "",
            _table([{"token": show(q), "count": f"{counts[q]:,}",
                     "nearest (cosine)": ", ".join(f"{show(i)} {s:.2f}" for i, s in ns)} for q, ns in nn]),
            "", "![embedding PCA](embeddings_pca.png)", ""]
