"""BPE training time on Tiny Shakespeare: ours vs Hugging Face tokenizers vs a naive recount loop.

    python experiments/benchmarks/bpe_train.py [--sizes 1024 4096 8192] [--naive-vocab 1024]

One run per figure (no repeats): read them as rough, the machine may be shared. All three use
GPT-2's pre-split regex, byte-level base tokens and no special tokens.

The naive loop is minbpe's RegexTokenizer.train: every merge recounts all pairs over every chunk
of the text and rewrites every chunk. It runs for real up to --naive-vocab; beyond that its time is
*extrapolated*: each naive merge costs about c x (tokens currently in the text), with c fitted on
the real run and the token counts at larger sizes taken from our tokenizer's encodings.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import regex

from gptlab.tokenizers.bpe import GPT2_SPLIT_PATTERN, BPETokenizer

TEXT = Path(__file__).resolve().parents[2] / "src" / "gptlab" / "assets" / "data" / "tinyshakespeare.txt"


def train_ours(text: str, vocab_size: int) -> float:
    t0 = time.perf_counter()
    BPETokenizer.train(text, vocab_size, special_tokens=(), progress=False)
    return time.perf_counter() - t0


def train_hf(text: str, vocab_size: int) -> float:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    t0 = time.perf_counter()
    tok.train_from_iterator([text], trainer)
    return time.perf_counter() - t0


def train_naive(text: str, vocab_size: int) -> tuple[float, list[int], list[float]]:
    """minbpe's loop; returns total seconds, tokens in the text before each merge, seconds per merge."""
    ids = [list(chunk.encode("utf-8")) for chunk in regex.findall(GPT2_SPLIT_PATTERN, text)]
    n_tokens, seconds = [], []
    t_start = time.perf_counter()
    for new in range(256, vocab_size):
        t0 = time.perf_counter()
        n_tokens.append(sum(len(c) for c in ids))
        stats: dict[tuple[int, int], int] = {}
        for c in ids:
            for pair in zip(c, c[1:]):
                stats[pair] = stats.get(pair, 0) + 1
        pair = max(stats, key=stats.get)
        merged = []
        for c in ids:
            out, i = [], 0
            while i < len(c):
                if i + 1 < len(c) and c[i] == pair[0] and c[i + 1] == pair[1]:
                    out.append(new)
                    i += 2
                else:
                    out.append(c[i])
                    i += 1
            merged.append(out)
        ids = merged
        seconds.append(time.perf_counter() - t0)
    return time.perf_counter() - t_start, n_tokens, seconds


def tokens_at(text: str, sizes: list[int]) -> dict[int, int]:
    """Tokens in the text at each vocabulary size (one training run, read as prefixes)."""
    full = BPETokenizer.train(text, max(sizes), special_tokens=(), progress=False)
    return {s: len(BPETokenizer(full.merges[: s - 256]).encode(text)) for s in sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument(
        "--naive-vocab", type=int, default=1024, help="run the naive loop for real up to here"
    )
    args = parser.parse_args()
    text = TEXT.read_text(encoding="utf-8")

    naive_s, naive_tokens, naive_steps = train_naive(text, args.naive_vocab)
    c = sum(naive_steps) / sum(naive_tokens)  # seconds per (merge x token)
    grid = sorted({*range(256, max(args.sizes) + 1, 128), *args.sizes, args.naive_vocab})
    counts = tokens_at(text, grid)

    def naive_estimate(vocab_size: int) -> float:
        # trapezoid over the token count curve: sum over merges of c * tokens(k)
        pts = [s for s in grid if s <= vocab_size]
        area = sum((counts[a] + counts[b]) / 2 * (b - a) for a, b in zip(pts, pts[1:]))
        return c * area

    print(
        f"naive loop, real run to {args.naive_vocab}: {naive_s:.1f} s "
        f"({naive_steps[0]:.3f} s first merge, {naive_steps[-1]:.3f} s last); model: {naive_estimate(args.naive_vocab):.1f} s"
    )
    print("| vocab | ours (s) | HF tokenizers (s) | naive (s) | ours / HF | naive / ours |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        ours, hf = train_ours(text, size), train_hf(text, size)
        if size <= args.naive_vocab:
            naive, note = (
                (naive_s, "") if size == args.naive_vocab else (naive_estimate(size), " (extrapolated)")
            )
        else:
            naive, note = naive_estimate(size), " (extrapolated)"
        print(
            f"| {size} | {ours:.2f} | {hf:.2f} | {naive:.0f}{note} | {ours / hf:.2f} | {naive / ours:.0f} |"
        )


if __name__ == "__main__":
    main()
