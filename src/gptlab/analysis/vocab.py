"""What a BPE vocabulary looks like at several sizes: compression, Zipf curve, merges, rare words.

BPE training is greedy and does not depend on the target size, so the first k merges of one long
run are exactly the merges of a run to 256 + k. The report therefore trains once, at the largest
size, and reads every smaller vocabulary as a prefix of it (ids < size).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import regex  # noqa: E402

from gptlab.analysis import save_figure
from gptlab.errors import UserError
from gptlab.paths import SHIPPED_SHAKESPEARE  # noqa: E402, F401 (vocab_report.py names it here)
from gptlab.tokenizers.bpe import BPETokenizer  # noqa: E402


def _show(s: str) -> str:
    """A token as a quoted string with whitespace made visible (" the", "\\n\\n")."""
    return json.dumps(s, ensure_ascii=False)


def _cell(s: str) -> str:
    """`_show` for a markdown table cell, where "|" would end the cell."""
    return _show(s).replace("|", "\\|")


def _plot(sizes: list[int], counts: dict[int, Counter[int]], bytes_per_token: dict[int, float], path: Path):
    fig, (zipf, comp) = plt.subplots(1, 2, figsize=(12, 4.8))
    for size in sizes:
        freqs = sorted(counts[size].values(), reverse=True)
        zipf.loglog(range(1, len(freqs) + 1), freqs, label=f"vocab {size}", linewidth=1.2)
    top = max(max(c.values()) for c in counts.values())
    ranks = range(1, max(sizes) + 1)
    zipf.loglog(ranks, [top / r for r in ranks], "k--", linewidth=0.8, label="Zipf: top / rank")
    zipf.set(xlabel="token rank", ylabel="occurrences in the text", title="Token frequency by rank")
    zipf.legend(fontsize=8)
    zipf.grid(True, which="major", alpha=0.3)
    comp.plot(sizes, [bytes_per_token[s] for s in sizes], "o-")
    comp.set_xscale("log", base=2)
    comp.set_xticks(sizes, [str(s) for s in sizes])
    comp.set(xlabel="vocabulary size", ylabel="bytes per token", title="Compression")
    comp.grid(True, alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


@dataclass
class _Vocabs:
    """One BPE run read at several sizes, with each size's token counts over the text."""

    text: str
    full: BPETokenizer
    sizes: list[int]
    tokenizers: dict[int, BPETokenizer]
    counts: dict[int, Counter[int]]
    train_s: float

    @property
    def big(self) -> int:
        return self.sizes[-1]

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))

    @property
    def n_words(self) -> int:
        return len(self.text.split())

    def n_tokens(self, size: int) -> int:
        return sum(self.counts[size].values())

    def bytes_per_token(self) -> dict[int, float]:
        return {s: self.n_bytes / self.n_tokens(s) for s in self.sizes}


def _train_vocabs(text: str, sizes: list[int], pattern: str) -> _Vocabs:
    t0 = time.perf_counter()
    full = BPETokenizer.train(text, sizes[-1], special_tokens=(), pattern=pattern)
    train_s = time.perf_counter() - t0
    sizes = [s for s in sizes if s <= full.vocab_size]  # the text may run out of pairs first
    tokenizers = {s: BPETokenizer(full.merges[: s - 256], pattern=full.pattern) for s in sizes}
    counts = {s: Counter(tok.encode(text)) for s, tok in tokenizers.items()}
    return _Vocabs(text, full, sizes, tokenizers, counts, train_s)


def _write_vocab_tsv(v: _Vocabs, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("id\ttoken\tbytes\tcount_at_largest_size\n")
        for i in range(v.full.vocab_size):
            f.write(f"{i}\t{_show(v.full.token_str(i))}\t{len(v.full.vocab[i])}\t{v.counts[v.big][i]}\n")


def _compression_section(v: _Vocabs, source: str, pattern: str) -> list[str]:
    lines = [
        "# BPE vocabulary report",
        "",
        f"Text: {source or 'given string'} — {v.n_bytes:,} bytes, {len(v.text):,} characters, "
        f"{v.n_words:,} whitespace-separated words. Split pattern: `{pattern}`. "
        f"One training run to {v.big} tokens took {v.train_s:.2f} s; smaller vocabularies are its prefixes.",
        "",
        "## Compression",
        "",
        "| vocab size | tokens | bytes / token | tokens / word | ids used |",
        "|---:|---:|---:|---:|---:|",
    ]
    bytes_per_token = v.bytes_per_token()
    for s in v.sizes:
        n, used = v.n_tokens(s), len(v.counts[s]) / s
        lines.append(f"| {s} | {n:,} | {bytes_per_token[s]:.2f} | {n / v.n_words:.2f} | {used:.0%} |")
    return lines + ["", "![Zipf plot and compression](zipf.png)", ""]


def _token_sections(v: _Vocabs, n_show: int) -> list[str]:
    """The first merges, the most frequent merged tokens and the longest tokens."""
    full, big = v.full, v.big
    lines = [f"## First {n_show} merges (the most frequent pairs at the time they were merged)", ""]
    lines += [
        "| id | left + right | token |",
        "|---:|---|---|",
        *(
            f"| {256 + k} | {_cell(full.token_str(a))} + {_cell(full.token_str(b))} | {_cell(full.token_str(256 + k))} |"
            for k, (a, b) in enumerate(full.merges[:n_show])
        ),
        "",
    ]
    merged = Counter({i: c for i, c in v.counts[big].items() if i >= 256})
    lines += [f"## Most frequent merged tokens in the text (vocab {big})", ""]
    lines += ["| id | token | count |", "|---:|---|---:|"]
    lines += [f"| {i} | {_cell(full.token_str(i))} | {c:,} |" for i, c in merged.most_common(n_show)]
    longest = sorted(range(256, big), key=lambda i: (-len(full.vocab[i]), i))[:n_show]
    lines += ["", f"## Longest tokens (vocab {big})", "", "| id | token | bytes |", "|---:|---|---:|"]
    return lines + [f"| {i} | {_cell(full.token_str(i))} | {len(full.vocab[i])} |" for i in longest]


def _rare_words_section(v: _Vocabs, n_show: int) -> list[str]:
    words = Counter(regex.findall(r"\p{L}+", v.text))
    rare = sorted((w for w, c in words.items() if c == 1), key=lambda w: (-len(w), w))[:n_show]
    lines = [
        "",
        "## How rare words split",
        "",
        f"The {len(rare)} longest words that occur once in the text, encoded after a space as in running "
        "text; `|` separates tokens.",
        "",
        "| word | " + " | ".join(f"vocab {s}" for s in v.sizes) + " |",
        "|---|" + "---|" * len(v.sizes),
    ]
    for w in rare:
        toks = v.tokenizers
        splits = ["\\|".join(toks[s].decode([i]) for i in toks[s].encode(" " + w)) for s in v.sizes]
        lines.append(f"| {w} | " + " | ".join(f"`{sp}`" for sp in splits) + " |")
    return lines


def _sample_section(v: _Vocabs) -> list[str]:
    big = v.big
    every = max(1, (big - 256) // 40)
    return [
        "",
        f"## The vocabulary as strings (vocab {big})",
        "",
        f"Every token with its id, byte length and count is in [vocab.tsv](vocab.tsv); the trained "
        f"tokenizer is [bpe_{big}.json](bpe_{big}.json) (one merge per line). The vocabulary of size "
        f"V is ids 0..V-1. A sample, every {every}th merged token:",
        "",
        " ".join(_show(v.full.token_str(i)) for i in range(256, big, every)),
        "",
    ]


def vocab_report(
    text: str,
    vocab_sizes: Sequence[int],
    out_dir: str | Path,
    pattern: str = "gpt2",
    source: str = "",
    n_show: int = 20,
) -> Path:
    """Train BPE on `text`, analyse it at each of `vocab_sizes`; write report.md, zipf.png,
    vocab.tsv (every token of the largest vocabulary) and bpe_<largest>.json. Returns report.md."""
    sizes = sorted(set(int(s) for s in vocab_sizes))
    if not sizes or sizes[0] < 256:
        raise UserError(
            f"vocab_sizes={list(vocab_sizes)}: need at least one size, each >= 256 (the byte tokens)"
        )
    if not text:
        raise UserError(f"the text to analyse is empty ({source or 'no source given'})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    v = _train_vocabs(text, sizes, pattern)
    _plot(v.sizes, v.counts, v.bytes_per_token(), out_dir / "zipf.png")
    v.full.save(out_dir / f"bpe_{v.big}.json")
    _write_vocab_tsv(v, out_dir / "vocab.tsv")
    lines = _compression_section(v, source, pattern) + _token_sections(v, n_show)
    lines += _rare_words_section(v, n_show) + _sample_section(v)
    report = out_dir / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report
