"""Data prep throughput (MB of UTF-8 text per second): data=text vs data=hf with several workers.

    .venv/bin/python experiments/benchmarks/prepare_throughput.py [--copies 8] [--num-proc 1 2 4]

The corpus is Tiny Shakespeare repeated `--copies` times: one .txt file for data=text, and its
paragraphs as documents of a local `datasets` dataset (save_to_disk) for data=hf. Prints a
Markdown table; figures go to experiments/benchmarks/README.md (Training).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from gptlab.data import prepare_hf, prepare_text
from gptlab.paths import SHIPPED_SHAKESPEARE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--tokenizers", nargs="+", default=["tiktoken", "char"], choices=["tiktoken", "char"])
    args = parser.parse_args()

    import datasets

    work = Path(tempfile.mkdtemp(prefix="gptlab-prep-"))
    text = "\n".join([SHIPPED_SHAKESPEARE.read_text()] * args.copies)
    (work / "corpus.txt").write_text(text)
    docs = [d for d in text.split("\n\n") if d.strip()]
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(work / "hf"))
    mb = len(text.encode()) / 1e6
    print(f"corpus: {mb:.1f} MB, {len(docs):,} documents; CPU cores {os.cpu_count()}\n")
    print("| source | tokenizer | workers | seconds | MB/s | load avg (1 min) |")
    print("|---|---|---|---|---|---|")
    for tok_name in args.tokenizers:
        tok = {"kind": "tiktoken", "encoding": "gpt2"} if tok_name == "tiktoken" else {"kind": "char"}
        load = os.getloadavg()[0]
        start = time.perf_counter()
        prepare_text(work / "corpus.txt", work / f"out-text-{tok_name}", tok, 0.1)
        seconds = time.perf_counter() - start
        print(f"| data=text | {tok_name} | 1 | {seconds:.1f} | {mb / seconds:.2f} | {load:.1f} |", flush=True)
        for n in args.num_proc:
            out = work / f"out-hf-{tok_name}-{n}"
            load = os.getloadavg()[0]
            start = time.perf_counter()
            prepare_hf(str(work / "hf"), out, tok, val_fraction=0.01, num_proc=n)
            seconds = time.perf_counter() - start
            print(f"| data=hf | {tok_name} | {n} | {seconds:.1f} | {mb / seconds:.2f} | {load:.1f} |", flush=True)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
