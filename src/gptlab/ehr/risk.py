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


# how each trajectory ended (TrajectoryResult.end_kind)
OUTCOME, STOP, HORIZON, CENSORED, UNFINISHED = 0, 1, 2, 3, 4
END_NAMES = ("outcome", "stop", "horizon", "censored", "unfinished")


@dataclass
class TrajectoryResult:
    risk: float  # naive: fraction of trajectories reaching an outcome within the horizon
    one_step: float  # P(next token is an outcome token)
    outcomes: int
    stopped: int  # ended by a stop token (a real "no outcome", e.g. death before readmission)
    past_horizon: int  # ended by the time horizon
    unfinished: int  # hit max_new_tokens first (censored: the horizon was not reached)
    tokens: int  # new tokens generated over all trajectories
    censored: int = 0  # ended by a censor token (<TL_END>: the record stops, the outcome is unknown)
    end_kind: np.ndarray | None = None  # per trajectory: OUTCOME / STOP / HORIZON / CENSORED / UNFINISHED
    end_minutes: np.ndarray | None = None  # per trajectory: summed interval minutes at its end


def prompt_ids(tok: EHRTokenizer, tl: Timeline, prediction_time: np.datetime64, max_len: int) -> list[int]:
    """The timeline up to prediction_time (inclusive), cut to max_len tokens by dropping the oldest
    events while keeping the demographic prefix (<TL_START>, static codes, age). With the
    tokenizer's age_at="window" the AGE token of a cut prompt is the age at its first kept token,
    as in every training window (windows.PatientWindows)."""
    ids, times, prefix = tok.encode_with_times(tl, until=prediction_time)
    if len(ids) <= max_len:
        return ids
    first = len(ids) - (max_len - prefix)
    age = ids[prefix - 1]
    if tok.age_at == "window" and tl.birth is not None:
        age = tok.age_id(tl.birth, times[first])
    return ids[: prefix - 1] + [age] + ids[first:]


@torch.no_grad()
def sample_trajectories(model, prompt: list[int], *, n: int, outcome_ids: list[int], stop_ids: list[int],
                        token_minutes: np.ndarray, horizon_minutes: float, max_new_tokens: int,
                        temperature: float = 1.0, generator: torch.Generator | None = None,
                        censor_ids: list[int] = ()) -> TrajectoryResult:
    """Sample n continuations of `prompt` with the KV cache until outcome / stop / censor / horizon."""
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
    is_censor = torch.zeros_like(is_outcome)
    is_censor[list(censor_ids)] = True
    is_stop |= is_censor
    kind = np.full(n, UNFINISHED)
    when = np.zeros(n)
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
            _record_ends(kind, when, live, elapsed, hit, over, stop, is_censor[nxt])
            if not bool(keep.any()) or step == max_new_tokens - 1:
                break
            if not bool(keep.all()):
                rows = keep.nonzero().squeeze(1)
                model.reorder_kv_cache(rows, len(prompt) + step)  # drop the finished rows
                live, elapsed, nxt = live[rows], elapsed[rows], nxt[rows]
            logits, _ = model(nxt.unsqueeze(1), pos=len(prompt) + step)
            last = logits[:, -1, :].float()
        rest = live.cpu().numpy()
        left = kind[rest] == UNFINISHED
        when[rest[left]] = elapsed.cpu().numpy()[left]
        unfinished = n - outcomes - stopped - past
    finally:
        model.clear_kv_cache()
    censored = int((kind == CENSORED).sum())
    return TrajectoryResult(outcomes / n, one_step, outcomes, stopped - censored, past, unfinished, tokens,
                            censored, kind, when)


def _record_ends(kind: np.ndarray, when: np.ndarray, live: torch.Tensor, elapsed: torch.Tensor, hit: torch.Tensor,
                 over: torch.Tensor, stop: torch.Tensor, censor: torch.Tensor) -> None:
    """Note how (and at how many minutes) the rows that end at this step ended."""
    rows, mins = live.cpu().numpy(), elapsed.cpu().numpy()
    for mask, k in ((hit, OUTCOME), (over, HORIZON), (stop & ~censor, STOP), (stop & censor, CENSORED)):
        m = mask.cpu().numpy()
        kind[rows[m]], when[rows[m]] = k, mins[m]


ESTIMATORS = ("naive", "complete_case", "km")


def estimate_risk(kind: np.ndarray, when: np.ndarray, estimator: str = "km") -> float:
    """Risk within the horizon from N trajectory ends (kinds and the minutes at which they ended).

    - naive: outcomes / N, a censored row (<TL_END>, token budget used up) counted as a survivor:
      biased low by the outcomes those rows would have had.
    - complete_case: outcomes / (outcomes + stops + reached horizon), censored rows dropped: biased
      high, as a censored row had survived part of the horizon (its remaining risk is below average).
    - km: 1 − Kaplan–Meier survival at the horizon, a censored row at risk until its censoring
      time (an outcome at the same time counts first); a stop (a competing end such as death
      before readmission) stays in the risk set with no outcome, so without censoring km equals
      naive exactly (cumulative incidence). Unbiased when censoring is independent of the outcome
      given the prompt, which is what sampling from one prompt gives.
    """
    n = len(kind)
    if n == 0:
        raise ValueError("estimate_risk needs at least one trajectory")
    outcomes = int((kind == OUTCOME).sum())
    if estimator == "naive":
        return outcomes / n
    censored = (kind == CENSORED) | (kind == UNFINISHED)
    if estimator == "complete_case":
        resolved = n - int(censored.sum())
        return outcomes / resolved if resolved else 0.0
    if estimator != "km":
        raise ValueError(f"risk estimator {estimator!r}: choose one of {list(ESTIMATORS)}")
    survival = 1.0
    for t in np.unique(when[kind == OUTCOME]):
        at_risk = int((~censored).sum() - ((kind == OUTCOME) & (when < t)).sum() + (censored & (when >= t)).sum())
        events = int(((kind == OUTCOME) & (when == t)).sum())
        survival *= 1 - events / at_risk
    return 1 - survival


def horizon_token_budget(tok: EHRTokenizer, timelines: dict, sids: np.ndarray, times: np.ndarray,
                         horizon_minutes: float, quantile: float = 0.99) -> tuple[int, int]:
    """(the `quantile` of the number of tokens training records hold in the horizon after a
    prediction time, + 1 for the outcome token; the number of labels it was measured on). A
    trajectory needs about that many new tokens to reach its horizon."""
    counts = []
    for s, t in zip(sids, times):
        tl = timelines.get(int(s))
        if tl is None:
            continue
        _, tt, plen = tok.encode_with_times(tl)
        after = (tt[plen:] > t) & (tt[plen:] <= t + np.timedelta64(int(horizon_minutes), "m"))
        counts.append(int(after.sum()))
    if not counts:
        raise ValueError("no training label to measure the token rate on: set max_new_tokens to a number")
    return int(np.ceil(np.quantile(counts, quantile))) + 1, len(counts)
