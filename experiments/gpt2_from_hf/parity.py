"""Measure how closely gptlab's GPT reproduces transformers' GPT2LMHeadModel, both directions.

    python experiments/gpt2_from_hf/parity.py --configs 20 --seed 0

For random GPT-2 shapes with random weights (random biases and LayerNorm gains too) it prints the
max |logit difference| for: HF → gptlab (save_pretrained → from_pretrained), the same with the
vocabulary padded to a multiple of 64, and gptlab → HF (GPT.save_pretrained →
GPT2LMHeadModel.from_pretrained). Last come GPT-2 124M-shaped models (12×12×768, 50257×1024) with
GPT-2's gelu_new and with gelu_pytorch_tanh (the same function computed by torch's fused kernel).
Runs offline on CPU in fp32.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gptlab.hf import from_pretrained, gpt_config_from_hf, save_pretrained
from gptlab.model import GPT


def randomize_(model: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """Weights ~N(0, 0.1), LayerNorm gains ~N(1, 0.2): nothing left at the 0/1 that would hide a missed copy."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if ("ln_" in name and name.endswith("weight")) else 0.1 * noise)
    return model.eval()


def random_config(rng: random.Random) -> dict:
    n_head = rng.choice([1, 2, 3, 4, 6, 8])
    return dict(
        vocab_size=rng.randint(10, 3000),
        n_positions=rng.randint(8, 128),
        n_head=n_head,
        n_embd=n_head * rng.choice([8, 16, 32]),
        n_layer=rng.randint(1, 6),
        activation_function=rng.choice(["gelu_new", "gelu_pytorch_tanh", "gelu"]),
        layer_norm_epsilon=rng.choice([1e-5, 1e-6, 1e-3]),
    )


@torch.no_grad()
def measure(cfg: dict, seed: int, batch: int = 2) -> tuple[float, float, float, float]:
    """max |logit| of the HF model, then the max |diff| of HF→gptlab, HF→gptlab padded, gptlab→HF."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, cfg["vocab_size"], (batch, cfg["n_positions"]), generator=gen)
    hf = randomize_(GPT2LMHeadModel(GPT2Config(bos_token_id=None, eos_token_id=None, **cfg)), gen)
    ref = hf(idx).logits
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        to_ours = (from_pretrained(tmp).eval()(idx)[0] - ref).abs().max().item()
        padded = (from_pretrained(tmp, vocab_multiple=64).eval()(idx)[0] - ref).abs().max().item()
    # the other direction: a gptlab model with its own random weights, exported
    ours = randomize_(GPT(gpt_config_from_hf(cfg)), gen)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(ours, tmp)
        back = GPT2LMHeadModel.from_pretrained(tmp).eval()
        to_hf = (back(idx).logits - ours(idx)[0]).abs().max().item()
    return ref.abs().max().item(), to_ours, padded, to_hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=20, help="number of random configs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-124m", action="store_true", help="skip the GPT-2 124M-shaped model (~1 min on CPU)"
    )
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    configs = [random_config(rng) for _ in range(args.configs)]
    if not args.no_124m:
        gpt2 = dict(vocab_size=50257, n_positions=1024, n_head=12, n_embd=768, n_layer=12)
        configs += [{**gpt2, "activation_function": a} for a in ("gelu_new", "gelu_pytorch_tanh")]
    print(
        "| layers | heads | n_embd | vocab | positions | activation | max abs logit | HF→gptlab | HF→gptlab (vocab_multiple=64) | gptlab→HF |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    worst = {}  # "random" / "124M" → max |diff| over all three directions
    for i, cfg in enumerate(configs):
        diffs = measure(cfg, seed=args.seed * 1000 + i, batch=1 if cfg["n_positions"] == 1024 else 2)
        kind = "124M" if cfg["n_positions"] == 1024 else "random"
        worst[kind] = max(worst.get(kind, 0.0), *diffs[1:])
        print(
            f"| {cfg['n_layer']} | {cfg['n_head']} | {cfg['n_embd']} | {cfg['vocab_size']} | {cfg['n_positions']} | "
            f"{cfg.get('activation_function', 'gelu_new')} | " + " | ".join(f"{d:.2e}" for d in diffs) + " |"
        )
    print(
        f"\nmax |logit diff|, all directions: {args.configs} random configs {worst.get('random', 0.0):.2e}",
        end="",
    )
    print(f", GPT-2 124M shape {worst['124M']:.2e}" if "124M" in worst else "")


if __name__ == "__main__":
    main()
