"""Decoding speed of two gptlab checkouts side by side in one run: this one against another `src/`.

    .venv/bin/python experiments/benchmarks/generate_ab.py --other ../main/src              # ~3 min here
    .venv/bin/python experiments/benchmarks/generate_ab.py --other ../main/src --quick      # ~1 min

What a change to the model or the decoding loop costs: the same random weights (seeded), the same
16-token prompt, batch 1, one thread, greedy with the KV cache (and beam search k=4), timed in a
fresh subprocess per checkout. The two checkouts alternate round by round, so load on a shared
machine hits both alike; the ratio is the median over rounds of other's seconds / this one's (> 1:
this checkout is faster). The generated tokens of the two are checked equal. The worker speaks both
decoding APIs (`generate(model, idx, Decoding(...))` and the older `model.generate(idx, n, ...)`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[2] / "src"

WORKER = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from gptlab.model import GPT, GPTConfig
shape, n, reps, beam_n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = dict(baby=dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, bias=False),
           small=dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257))[shape]
torch.manual_seed(0)
model = GPT(GPTConfig(**cfg)).eval()
prompt = torch.randint(0, cfg["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(1))
try:
    from gptlab.generation import Decoding, generate
    run = lambda strategy, m, **kw: generate(model, prompt, Decoding(strategy, m, **kw))
except ImportError:
    run = lambda strategy, m, **kw: model.generate(prompt, m, strategy=strategy, **kw)
cases = {"greedy": lambda: run("greedy", n), "beam4": lambda: run("beam", beam_n, num_beams=4)}
out = {}
with torch.inference_mode():
    for name, fn in cases.items():
        tokens = fn().tolist()  # warm-up, and the tokens compared between checkouts
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = {"seconds": min(times), "tokens": tokens}
print(json.dumps(out))
"""


def run_worker(src: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", WORKER, args.shape, str(args.new_tokens), str(args.reps), str(args.beam_tokens)]
    return json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--other", type=Path, required=True, help="the src/ folder of the checkout to compare with")
    p.add_argument("--shape", default="baby", choices=["baby", "small"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per worker (the minimum is kept)")
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--beam-tokens", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="3 rounds, 2 reps, 100 greedy / 32 beam tokens")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.reps, args.new_tokens, args.beam_tokens = 3, 2, 100, 32
    load_before = open("/proc/loadavg").read().split()[:3]
    rounds = []
    for _ in range(args.rounds):
        rounds.append({"this": run_worker(HERE, args), "other": run_worker(args.other.resolve(), args)})
        print("round", len(rounds), {side: {case: round(r["seconds"], 3) for case, r in out.items()}
                                     for side, out in rounds[-1].items()}, file=sys.stderr, flush=True)
    result = {"shape": args.shape, "new_tokens": args.new_tokens, "beam_tokens": args.beam_tokens,
              "rounds": args.rounds, "this": str(HERE), "other": str(args.other.resolve())}
    for case in ("greedy", "beam4"):
        this = [r["this"][case]["seconds"] for r in rounds]
        other = [r["other"][case]["seconds"] for r in rounds]
        result[case] = {"this_s": statistics.median(this), "other_s": statistics.median(other),
                        "other_over_this": statistics.median(o / t for o, t in zip(other, this)),
                        "tokens_equal": all(r["this"][case]["tokens"] == r["other"][case]["tokens"] for r in rounds)}
    result["loadavg_before"], result["loadavg_after"] = load_before, open("/proc/loadavg").read().split()[:3]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
