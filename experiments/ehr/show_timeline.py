"""Print one patient's prepared timeline as readable text (token + code name, one line per timestamp).

    python experiments/ehr/show_timeline.py data/prepared/synthetic_ehr/ehr-5-5-10 [--split test] [--row 0]
"""

import argparse

import numpy as np

from gptlab.data import read_meta
from gptlab.ehr.prepare import read_index
from gptlab.tokenizers import tokenizer_from_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--row", type=int, default=0, help="which patient of the split (index row)")
    ap.add_argument("--max-tokens", type=int, default=120)
    args = ap.parse_args()
    meta = read_meta(args.data_dir)
    tok = tokenizer_from_spec(meta["tokenizer"])
    sid, start, end = read_index(args.data_dir, args.split)[args.row][:3]
    ids = np.fromfile(f"{args.data_dir}/{args.split}.bin", dtype=meta["dtype"])[start:end]
    print(f"subject {sid}: {end - start} tokens (first {min(args.max_tokens, end - start)} shown)\n")
    print(tok.readable(ids[: args.max_tokens]))


if __name__ == "__main__":
    main()
