"""Would GPT-2 small decode faster with transformers' (in, out) weight layout? A trial, not a feature.

    .venv/bin/python experiments/benchmarks/decode_layout_trial.py [--threads 2] [--new-tokens 128]

Every nn.Linear of our GPT-2-small-shaped model (random weights, shared with transformers) is
switched to `x @ W_t` over a contiguous (in, out) copy of its weight (transformers' `Conv1D`
layout; 2× the weights' memory), and greedy decoding is timed against our default path and
transformers' generate, interleaved. The tokens of all three are checked equal.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location("generate_bench", Path(__file__).with_name("generate.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ours, hf = bench.twins(bench.SHAPES["gpt2-small"])
    prompt = torch.randint(0, ours.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    n = args.new_tokens
    linears = [m for m in ours.modules() if isinstance(m, torch.nn.Linear)]
    in_out = {m: m.weight.detach().t().contiguous() for m in linears}

    def use_in_out(on: bool) -> None:
        for m in linears:
            if not on:
                m.__dict__.pop("forward", None)  # back to nn.Linear.forward
            elif m.bias is None:
                m.forward = lambda x, w=in_out[m]: x @ w
            else:
                m.forward = lambda x, w=in_out[m], b=m.bias: torch.addmm(b, x.reshape(-1, x.size(-1)), w).view(
                    *x.shape[:-1], -1)

    def ours_run(on: bool):
        use_in_out(on)
        try:
            return bench.generate(ours, prompt, bench.Decoding("greedy", n))
        finally:
            use_in_out(False)

    runs = {"ours (F.linear, (out, in))": lambda: ours_run(False), "ours, x @ W over (in, out) copies": lambda: ours_run(True),
            "transformers": lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                                do_sample=False, pad_token_id=0)}
    with torch.inference_mode():
        outputs = {k: fn() for k, fn in runs.items()}  # warm-up, and the equality check
        same = all(torch.equal(o, outputs["transformers"]) for o in outputs.values())
        rates = {k: [] for k in runs}
        for _ in range(args.reps):
            for k, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                rates[k].append(n / (time.perf_counter() - t0))
    print(f"{n} new tokens, {torch.get_num_threads()} threads, tokens all equal: {same}")
    for k, v in rates.items():
        print(f"{k}: {sorted(v)[len(v) // 2]:.1f} tok/s (runs {', '.join(f'{r:.1f}' for r in v)})")


if __name__ == "__main__":
    main()
