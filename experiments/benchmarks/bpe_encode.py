"""Encoding speed (MB/s) of our BPE vs tiktoken on the same text, with the same GPT-2 vocabulary.

    python experiments/benchmarks/bpe_encode.py [--text path] [--repeats 3]

"cold" empties our chunk cache before each run, "warm" keeps it from earlier passes over the same
text; the best of --repeats runs is kept. tiktoken runs single-threaded (`encode_ordinary`).
Ids are checked equal first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import tiktoken

from gptlab.tokenizers.bpe import BPETokenizer
from gptlab.tokenizers.tiktoken_bpe import use_shipped_tiktoken_cache

TEXT = Path(__file__).resolve().parents[2] / "src" / "gptlab" / "assets" / "data" / "tinyshakespeare.txt"


def best_seconds(fn, repeats: int, setup=None) -> float:
    times = []
    for _ in range(repeats):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text", type=Path, default=TEXT)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    text = args.text.read_text(encoding="utf-8")
    mb = len(text.encode("utf-8")) / 1e6

    use_shipped_tiktoken_cache()
    enc = tiktoken.get_encoding("gpt2")
    ours = BPETokenizer.from_tiktoken("gpt2")
    assert ours.encode_ordinary(text) == enc.encode_ordinary(text), "ids differ from tiktoken"
    trained = BPETokenizer.train(text, 4096, progress=False)

    trained_tt = trained.to_tiktoken()
    assert trained_tt.encode_ordinary(text) == trained.encode_ordinary(text), "to_tiktoken ids differ"
    rows = [
        ("tiktoken gpt2", best_seconds(lambda: enc.encode_ordinary(text), args.repeats)),
        (
            "ours gpt2, cold cache",
            best_seconds(lambda: ours.encode_ordinary(text), args.repeats, setup=ours._cache.clear),
        ),
        ("ours gpt2, warm cache", best_seconds(lambda: ours.encode_ordinary(text), args.repeats)),
        ("ours trained 4096, warm cache", best_seconds(lambda: trained.encode_ordinary(text), args.repeats)),
        (
            "trained 4096 via to_tiktoken()",
            best_seconds(lambda: trained_tt.encode_ordinary(text), args.repeats),
        ),
    ]
    print(f"text: {args.text.name}, {mb:.2f} MB; best of {args.repeats}")
    print("| encoder | seconds | MB/s |")
    print("|---|---:|---:|")
    for name, s in rows:
        print(f"| {name} | {s:.3f} | {mb / s:.2f} |")


if __name__ == "__main__":
    main()
