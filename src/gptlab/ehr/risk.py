"""Risk by trajectory sampling (ETHOS): continue a patient's timeline N times and count outcomes.

For one (subject, prediction_time) the prompt is the subject's timeline up to and including that
time (never later: `prompt_ids`). The N trajectories run as one batch through the KV cache; each
stops at an outcome token (→ counts), a stop token, or once its summed interval tokens pass the
horizon (→ no outcome). Finished rows leave the batch, so the cost follows the live trajectories.
risk = outcomes / N. The one-step baseline is the probability mass the model puts on the outcome
tokens as the very next token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gptlab.ehr.meds import Timeline
from gptlab.ehr.tokenizer import EHRTokenizer


@dataclass
class TrajectoryResult:
    risk: float  # fraction of trajectories reaching an outcome within the horizon
    one_step: float  # P(next token is an outcome token)
    outcomes: int
    stopped: int  # ended by a stop token
    past_horizon: int  # ended by the time horizon
    unfinished: int  # hit max_new_tokens first (counted as no outcome)
    tokens: int  # new tokens generated over all trajectories


def prompt_ids(tok: EHRTokenizer, tl: Timeline, prediction_time: np.datetime64, max_len: int) -> list[int]:
    """The timeline up to prediction_time (inclusive), cut to max_len tokens by dropping the oldest
    events while keeping the demographic prefix (<TL_START>, static codes, age)."""
    ids = tok.encode_timeline(tl, until=prediction_time)
    if len(ids) <= max_len:
        return ids
    prefix = 2 + sum(len(tok.code_ids(c)) for c in tl.static)
    return ids[:prefix] + ids[len(ids) - (max_len - prefix):]


@torch.no_grad()
def sample_trajectories(model, prompt: list[int], *, n: int, outcome_ids: list[int], stop_ids: list[int],
                        token_minutes: np.ndarray, horizon_minutes: float, max_new_tokens: int,
                        temperature: float = 1.0, generator: torch.Generator | None = None) -> TrajectoryResult:
    """Sample n continuations of `prompt` with the KV cache until outcome / stop / horizon."""
    if not model.config.causal:
        raise ValueError("sample_trajectories needs a causal model (model.causal=true): a bidirectional model's "
                         "cached keys go stale as the trajectory grows")
    block = model.config.block_size
    if len(prompt) + max_new_tokens > block:
        raise ValueError(f"prompt {len(prompt)} + max_new_tokens {max_new_tokens} exceeds block_size {block}; "
                         f"cut the prompt with prompt_ids(max_len=block_size - max_new_tokens)")
    device = next(model.parameters()).device
    is_outcome = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)
    is_outcome[outcome_ids] = True
    is_stop = torch.zeros_like(is_outcome)
    is_stop[stop_ids] = True
    minutes = torch.as_tensor(token_minutes, dtype=torch.float64, device=device)

    model.setup_kv_cache(1, max_len=len(prompt) + max_new_tokens)
    try:
        logits, _ = model(torch.tensor([prompt], dtype=torch.long, device=device), pos=0)
        last = logits[:, -1, :].float()
        one_step = float(last.softmax(-1)[0, is_outcome].sum())
        model.reorder_kv_cache(torch.zeros(n, dtype=torch.long, device=device), len(prompt))  # n copies of the prompt's cache
        last = last.expand(n, -1)
        live = torch.arange(n, device=device)  # original row of each batch row
        elapsed = torch.zeros(n, dtype=torch.float64, device=device)
        outcomes = stopped = past = tokens = 0
        for step in range(max_new_tokens):
            probs = (last / temperature).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            tokens += len(live)
            elapsed += minutes[nxt]
            hit = is_outcome[nxt] & (elapsed <= horizon_minutes)
            over = elapsed > horizon_minutes
            stop = is_stop[nxt] & ~hit & ~over
            outcomes += int(hit.sum())
            past += int(over.sum())
            stopped += int(stop.sum())
            keep = ~(hit | over | stop)
            if not bool(keep.any()) or step == max_new_tokens - 1:
                break
            if not bool(keep.all()):
                rows = keep.nonzero().squeeze(1)
                model.reorder_kv_cache(rows, len(prompt) + step)  # drop the finished rows
                live, elapsed, nxt = live[rows], elapsed[rows], nxt[rows]
            logits, _ = model(nxt.unsqueeze(1), pos=len(prompt) + step)
            last = logits[:, -1, :].float()
        unfinished = n - outcomes - stopped - past
    finally:
        model.clear_kv_cache()
    return TrajectoryResult(outcomes / n, one_step, outcomes, stopped, past, unfinished, tokens)
