"""Decoding speed on CPU: our KV cache vs no cache, ours vs transformers' generate, beam search.

    .venv/bin/python experiments/benchmarks/generate.py                      # everything, ~10 min here
    .venv/bin/python experiments/benchmarks/generate.py --models baby --reps 5

Batch 1, a 16-token prompt, greedy decoding of --new-tokens tokens (default 512) on random weights
of GPT-2 small's shape (12×12×768, vocab 50257, block 1024) and nanoGPT's baby model (6×6×384,
vocab 65, block 256). transformers runs the very same weights (saved with save_pretrained); both
outputs are checked equal. Contenders run interleaved, once each per repetition, so that load on a
shared machine hits them alike: the table gives the median tokens/s and the median of the
per-repetition ratios. transformers cannot go past n_positions (its position table ends there), so on
the baby model the comparison with it stops at block_size - 16 = 240 new tokens; ours also runs the
full 512, where the window slides and every step recomputes it.

--compile adds ours with compile=True and transformers with its static cache + torch.compile (its
first call, the compile, is kept apart in first_call_seconds); --dtype bfloat16 runs both in bf16;
--read-rate measures what one thread reads from memory per second, the ceiling of a batch-1 step
(weights_GB_per_s is tokens/s × the bytes of weights a step reads); --products-only times a step
cut down to its matrix products, the tokens/s no implementation of those weights can beat here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import CompileConfig, GPT2LMHeadModel  # noqa: E402

from gptlab.generation import Decoding, generate  # noqa: E402
from gptlab.hf import save_pretrained  # noqa: E402
from gptlab.model import GPT, GPTConfig  # noqa: E402

transformers.logging.set_verbosity_error()

SHAPES = {
    "gpt2-small": GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
    "baby": GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, bias=False,
                      gelu_approximate="none"),
    # the baby model with a 1024-token position table: 16 + 512 tokens fit, so cache vs no cache is
    # measured over the whole 512 without the window sliding (no-cache GPT-2 small takes ~20 min here)
    "baby-ctx1024": GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=1024, vocab_size=65, bias=False,
                              gelu_approximate="none"),
}


def twins(config: GPTConfig, dtype: torch.dtype = torch.float32) -> tuple[GPT, GPT2LMHeadModel]:
    torch.manual_seed(0)
    ours = GPT(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(ours, folder)
        hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    return ours.to(dtype), hf.to(dtype)


def contenders(ours: GPT, hf: GPT2LMHeadModel, prompt: torch.Tensor, args) -> dict:
    """name → (function returning the output ids, number of new tokens it makes)."""
    fit = min(args.new_tokens, ours.config.block_size - prompt.size(1))  # what transformers can generate
    nc = fit if args.no_cache_tokens is None else args.no_cache_tokens
    nb = fit if args.beam_tokens is None else args.beam_tokens
    mask = torch.ones_like(prompt)
    # transformers' compiled path: a static cache and torch.compile of its forward; on CPU it compiles
    # only when told to (_compile_all_devices), otherwise it decodes the static cache eagerly
    static = dict(cache_implementation="static", compile_config=CompileConfig())
    static["compile_config"]._compile_all_devices = True

    def ours_run(n, **kw):
        decoding = Decoding(**{"strategy": "greedy", "max_new_tokens": n, **kw})
        return lambda: generate(ours, prompt, decoding)

    def hf_run(n, **kw):
        return lambda: hf.generate(prompt, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0, **kw)

    run = {f"ours cache {fit}": (ours_run(fit), fit), f"hf cache {fit}": (hf_run(fit), fit)}
    if args.compile:
        run[f"ours compiled {fit}"] = (ours_run(fit, compile=True), fit)
        run[f"hf compiled {fit}"] = (hf_run(fit, **static), fit)
    if fit < args.new_tokens:  # past block_size: only ours, with the sliding window recomputed
        run[f"ours cache {args.new_tokens}"] = (ours_run(args.new_tokens), args.new_tokens)
    if nc:
        run.setdefault(f"ours cache {nc}", (ours_run(nc), nc))
        run[f"ours no-cache {nc}"] = (ours_run(nc, use_cache=False), nc)
    if nb:
        run[f"ours beam4 {nb}"] = (ours_run(nb, strategy="beam", num_beams=4), nb)
        run[f"hf beam4 {nb}"] = (hf_run(nb, num_beams=4), nb)
        if args.compile:
            run[f"ours compiled-beam4 {nb}"] = (ours_run(nb, strategy="beam", num_beams=4, compile=True), nb)
    return run


def pairs(names) -> dict[str, tuple[str, str]]:
    """label → (faster candidate, reference): each of ours against transformers' same decoding,
    compiled ours also against transformers' default (eager, dynamic cache), and cache vs no cache."""
    out = {}
    for k in names:
        if not k.startswith("ours"):
            continue
        hf = k.replace("ours", "hf")
        if hf in names:
            out[f"{k} vs {hf}"] = (k, hf)
        for variant, ref in (("compiled ", "cache "), ("compiled-beam4", "beam4")):
            if variant in k and hf.replace(variant, ref) in names:
                out[f"{k} vs {hf.replace(variant, ref)}"] = (k, hf.replace(variant, ref))
        if "no-cache" in k:
            out[f"{k.replace('no-cache', 'cache')} vs no-cache"] = (k.replace("no-cache", "cache"), k)
    return out


def read_rate() -> dict[str, float]:
    """GB/s one thread reads from memory: summing 500 MB, and GPT-2 small's LM head (50257×768,
    154 MB) times one vector. Decoding batch 1 cannot go faster than its weights stream in."""
    big, head, x = torch.randn(125_000_000), torch.randn(50257, 768), torch.randn(1, 768)
    out = {}
    for label, fn, nbytes in (("sum 500 MB", big.sum, big.numel() * 4),
                              ("LM head matvec", lambda: torch.nn.functional.linear(x, head), head.numel() * 4)):
        fn()
        best = min(seconds(fn) for _ in range(5))
        out[label] = nbytes / best / 1e9
    return out


@torch.inference_mode()
def products_only(model: GPT, tokens: int = 60) -> float:
    """Tokens/s of a decode step cut down to its matrix products: every block's four Linear layers
    and the LM head, each on a fresh (1, 1, in) input, nothing else. Any batch-1 implementation of
    the same weights (ours, transformers') is slower than this on the same machine and threads."""
    linears = [m for block in model.transformer.h for m in block.modules() if isinstance(m, torch.nn.Linear)]
    linears.append(model.lm_head)
    inputs = [torch.randn(1, 1, m.in_features, dtype=m.weight.dtype) for m in linears]

    def step():
        for _ in range(tokens):
            for m, x in zip(linears, inputs):
                m(x)

    step()
    return tokens / min(seconds(step) for _ in range(3))


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def weight_bytes(model: GPT) -> int:
    """Bytes of weights one decoding step reads: every parameter once (the tied table is the LM
    head), except the position table, of which it reads one row."""
    wpe = model.transformer.wpe.weight
    return sum(p.numel() * p.element_size() for p in model.parameters()) - wpe.numel() * wpe.element_size()


def bench(name: str, args) -> dict:
    load_before = open("/proc/loadavg").read().split()[:3]
    ours, hf = twins(SHAPES[name], getattr(torch, args.dtype))
    prompt = torch.randint(0, ours.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    run = contenders(ours, hf, prompt, args)
    times: dict[str, list[float]] = {k: [] for k in run}
    outputs, first = {}, {}
    with torch.inference_mode():
        for k, (fn, _) in run.items():  # warm-up: the compile time, and the outputs compared below
            t0 = time.perf_counter()
            outputs[k] = fn()
            first[k] = round(time.perf_counter() - t0, 2)
        for _ in range(args.reps):
            for k, (fn, _) in run.items():
                times[k].append(seconds(fn))
    rate = {k: statistics.median(run[k][1] / t for t in v) for k, v in times.items()}
    # speed-up: median over repetitions of time(reference) / time(candidate)
    ratios = {label: statistics.median(tb / ta for ta, tb in zip(times[a], times[b]))
              for label, (a, b) in pairs(run).items()}
    same = {label: torch.equal(outputs[a], outputs[b]) for label, (a, b) in pairs(run).items()}
    nbytes = weight_bytes(ours)
    floor = {"products_only_tokens_per_s": products_only(ours)} if args.products_only else {}
    return {"dtype": args.dtype, "weights_MB_per_token": nbytes / 1e6, **floor,
            "weights_GB_per_s": {k: r * nbytes / 1e9 for k, r in rate.items() if "beam" not in k and "no-cache" not in k},
            "tokens_per_s": rate, "speedups": ratios, "outputs_equal": same,
            "first_call_seconds": first, "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
            "loadavg_before": load_before, "loadavg_after": open("/proc/loadavg").read().split()[:3]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-cache-tokens", type=int, default=None,
                   help="new tokens for the no-cache runs (default: as the HF comparison; 0: skip)")
    p.add_argument("--beam-tokens", type=int, default=None,
                   help="new tokens for beam search k=4 (default: as the HF comparison; 0: skip)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a machine busier than its cores, a second OpenMP "
                        "thread waits for a busy core at every op and decoding runs ~10x slower; 0: torch's default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="weights and activations of both implementations (compare equal dtypes only)")
    p.add_argument("--compile", action="store_true",
                   help="also ours with compile=True and transformers with a static cache + torch.compile "
                        "(first_call_seconds holds the compile time)")
    p.add_argument("--read-rate", action="store_true",
                   help="also measure the memory read rate of one thread (the ceiling of batch-1 decoding)")
    p.add_argument("--products-only", action="store_true",
                   help="also time a decode step cut down to its matrix products (the ceiling of tokens/s)")
    p.add_argument("--out", type=Path, default=None, help="also write the results here as JSON")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"torch": torch.__version__, "transformers": transformers.__version__,
              "threads": torch.get_num_threads(), "loadavg_before": open("/proc/loadavg").read().split()[:3]}
    if args.read_rate:
        result["read_GB_per_s"] = read_rate()
        print("read GB/s", result["read_GB_per_s"], flush=True)
    for name in args.models:
        result[name] = bench(name, args)
        print(name, json.dumps(result[name], indent=1), flush=True)
    result["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    print("loadavg before", result["loadavg_before"], "after", result["loadavg_after"])
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
