"""Decoding: turn a model's next-token logits into text, one token at a time.

Built from small pieces: logits processors (temperature → top-k → top-p, Hugging Face's order),
a chooser (argmax or multinomial), and a loop that feeds the KV cache one token per step.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def validate(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None to disable), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (or None to disable), got {top_p}")


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / temperature


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits per row (ties beyond k are dropped, not kept)."""
    k = min(k, logits.size(-1))
    kept = torch.topk(logits, k, dim=-1).indices
    out = torch.full_like(logits, float("-inf"))
    return out.scatter(-1, kept, logits.gather(-1, kept))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches p (always at least one)."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cum - sorted_logits.softmax(dim=-1) >= p  # mass before this token already reaches p
    drop[..., 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def process_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    if temperature != 1.0:
        logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = apply_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = apply_top_p(logits, top_p)
    return logits


def choose(logits: torch.Tensor, greedy: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits → (B, 1) token ids."""
    if greedy:
        return logits.argmax(dim=-1, keepdim=True)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, *, strategy: str = "sample",
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             eos_token_id: int | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue idx (B, T) by up to max_new_tokens tokens; returns (B, T + new).

    strategy "greedy" (or temperature 0) takes the argmax; "sample" draws from the processed
    distribution. Prompts longer than block_size are cropped from the left. With a KV cache the
    prompt is run once and each step feeds one token; when the context would pass block_size
    the cache is rebuilt on the last block_size tokens (sliding window, recomputed).
    """
    if strategy not in ("sample", "greedy"):
        raise ValueError(f"strategy must be 'sample' or 'greedy', got {strategy!r}")
    validate(max_new_tokens, temperature, top_k, top_p)
    greedy = strategy == "greedy" or temperature == 0
    block_size = model.config.block_size
    was_training = model.training
    model.eval()
    out = idx
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    if use_cache:
        model.setup_kv_cache(idx.size(0))
    pos = 0  # tokens held in the cache; 0 means (re)fill it from the last block_size tokens
    try:
        for _ in range(max_new_tokens):
            if not use_cache:
                logits, _ = model(out[:, -block_size:])
            elif pos == 0:
                context = out[:, -block_size:]
                logits, _ = model(context, pos=0)
                pos = context.size(1)
            else:
                logits, _ = model(out[:, -1:], pos=pos)
                pos += 1
            if pos == block_size:  # full: the next token needs a slid window, recomputed from scratch
                pos = 0
            logits = process_logits(logits[:, -1, :].float(), 1.0 if greedy else temperature, top_k, top_p)
            nxt = choose(logits, greedy, generator)
            if eos_token_id is not None:
                nxt = nxt.masked_fill(finished.unsqueeze(1), eos_token_id)
                finished |= nxt.squeeze(1) == eos_token_id
            out = torch.cat([out, nxt], dim=1)
            if eos_token_id is not None and bool(finished.all()):
                break
    finally:
        if use_cache:
            model.clear_kv_cache()
        model.train(was_training)
    return out
