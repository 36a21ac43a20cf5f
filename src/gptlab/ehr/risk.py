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

from gptlab.decoding import Decoding, next_token
from gptlab.ehr.meds import Timeline
from gptlab.ehr.tokenizer import EHRTokenizer
from gptlab.generation import Decoder


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
    """Sample n continuations of `prompt` with the KV cache until outcome / stop / horizon.

    The decoding loop is gptlab.generation's: a `Decoder` (its own KV cache, prefilled once with the
    prompt and fanned out to n rows) and `next_token` under Decoding(temperature=...)."""
    if not model.config.causal:
        raise ValueError("sample_trajectories needs a causal model (model.causal=true): a bidirectional model's "
                         "cached keys go stale as the trajectory grows")
    P, block = len(prompt), model.config.block_size
    if P + max_new_tokens > block:
        raise ValueError(f"prompt {P} + max_new_tokens {max_new_tokens} exceeds block_size {block}; "
                         f"cut the prompt with prompt_ids(max_len=block_size - max_new_tokens)")
    device = next(model.parameters()).device
    ends = _Ends(model.config.vocab_size, outcome_ids, stop_ids, token_minutes, horizon_minutes, n, device)
    decoding = Decoding(temperature=temperature, max_new_tokens=max_new_tokens)
    decoder = Decoder(model, 1, max_len=P + max_new_tokens)
    seq = torch.tensor([prompt], dtype=torch.long, device=device)
    last = decoder(seq)
    one_step = float(last.softmax(-1)[0, ends.is_outcome].sum())
    decoder.reorder(torch.zeros(n, dtype=torch.long, device=device))  # n copies of the prompt's cache
    seq, last = seq.expand(n, -1).contiguous(), last.expand(n, -1)
    seq = torch.cat([seq, seq.new_zeros(n, max_new_tokens)], dim=1)  # preallocated: no torch.cat per step
    tokens = 0
    for step in range(max_new_tokens):
        nxt = next_token(last, decoding, generator)
        tokens += len(nxt)
        keep = ends.update(nxt)
        if not bool(keep.any()) or step == max_new_tokens - 1:
            break
        if not bool(keep.all()):
            rows = keep.nonzero().squeeze(1)
            decoder.reorder(rows)  # drop the finished rows
            ends.keep(rows)
            seq, nxt = seq[rows], nxt[rows]
        seq[:, P + step] = nxt
        last = decoder(seq[:, : P + step + 1])
    unfinished = n - ends.outcomes - ends.stopped - ends.past
    return TrajectoryResult(ends.outcomes / n, one_step, ends.outcomes, ends.stopped, ends.past, unfinished, tokens)


class _Ends:
    """How the live trajectories end: an outcome token within the horizon, a stop token, or the
    horizon passed (summed interval tokens); counts each and tracks every live row's elapsed time."""

    def __init__(self, vocab_size: int, outcome_ids: list[int], stop_ids: list[int], token_minutes: np.ndarray,
                 horizon_minutes: float, n: int, device: torch.device):
        self.is_outcome = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        self.is_outcome[outcome_ids] = True
        self.is_stop = torch.zeros_like(self.is_outcome)
        self.is_stop[stop_ids] = True
        self.minutes = torch.as_tensor(token_minutes, dtype=torch.float64, device=device)
        self.horizon = horizon_minutes
        self.elapsed = torch.zeros(n, dtype=torch.float64, device=device)
        self.outcomes = self.stopped = self.past = 0

    def update(self, nxt: torch.Tensor) -> torch.Tensor:
        """Count the rows that end with token nxt (B,); returns which rows go on."""
        self.elapsed += self.minutes[nxt]
        hit = self.is_outcome[nxt] & (self.elapsed <= self.horizon)
        over = self.elapsed > self.horizon
        stop = self.is_stop[nxt] & ~hit & ~over
        self.outcomes += int(hit.sum())
        self.past += int(over.sum())
        self.stopped += int(stop.sum())
        return ~(hit | over | stop)

    def keep(self, rows: torch.Tensor) -> None:
        self.elapsed = self.elapsed[rows]
