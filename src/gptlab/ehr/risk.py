"""Risk by trajectory sampling (ETHOS): continue a patient's timeline N times and count outcomes.

For one (subject, prediction_time) the prompt is the subject's timeline up to and including that
time (never later: `prompt_ids`). The N trajectories run as one batch through the KV cache; each
stops at an outcome token (→ counts), a stop token (a real "no outcome"), a censor token (the
record ends: unknown), or once its summed interval tokens pass the horizon (→ no outcome); a row
still going after max_new_tokens is censored too. Finished rows leave the batch, so the cost
follows the live trajectories. The risk is `estimate_risk` over how the N rows ended (naive,
complete-case or Kaplan–Meier; see there). The one-step baseline is the probability mass the model puts on the outcome
tokens as the very next token.

`hazard=True` samples differently (Rao–Blackwellised, the estimator named "hazard"): at every step
the probability the model gives the outcome tokens (its hazard h) is accumulated instead of drawn,
and the next token is drawn with the outcome and censor tokens masked out. A row's risk is
1 − ∏(1 − h'), h' = h / (1 − c) the hazard once censoring (mass c on the censor tokens) is removed,
and the estimate is the mean over rows: P(no outcome) = E_q[∏(1 − h')] for q the masked process,
so it is unbiased for the model's risk (censoring independent given the history, as for km), with
no 0/1 draw per row: far less Monte Carlo noise at the same N.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gptlab.decoding import Decoding, next_token
from gptlab.ehr.meds import Timeline
from gptlab.ehr.tokenizer import EHRTokenizer
from gptlab.generation import RaggedDecoder

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
    row_risk: np.ndarray | None = None  # hazard sampling only: per trajectory 1 − ∏(1 − h')


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
                        censor_ids: list[int] = (), hazard: bool = False) -> TrajectoryResult:
    """Sample n continuations of `prompt` with the KV cache until outcome / stop / censor / horizon.

    The decoding loop is gptlab.generation's: a `RaggedDecoder` (its own KV cache, prefilled once
    with the prompt and fanned out to n rows) and `next_token` under Decoding(temperature=...). With
    hazard=True the outcome and censor tokens are never drawn; their probabilities are accumulated
    into TrajectoryResult.row_risk (module docstring)."""
    return sample_trajectories_batch(
        model, [prompt], n=n, outcome_ids=outcome_ids, stop_ids=stop_ids, token_minutes=token_minutes,
        horizon_minutes=horizon_minutes, max_new_tokens=max_new_tokens, temperature=temperature,
        generator=generator, censor_ids=censor_ids, hazard=hazard)[0]


@torch.no_grad()
def sample_trajectories_batch(model, prompts: list[list[int]], *, n: int, outcome_ids: list[int],
                              stop_ids: list[int], token_minutes: np.ndarray, horizon_minutes: float,
                              max_new_tokens: int, temperature: float = 1.0,
                              generator: torch.Generator | None = None, censor_ids: list[int] = (),
                              hazard: bool = False) -> list[TrajectoryResult]:
    """`sample_trajectories` for several prompts at once: their n rows each run as one batch
    (len(prompts) × n rows), one result per prompt. A one-token step of a small model costs about
    the same for 20 rows as for several thousand on a GPU (its time is kernel launches), and several
    times less per row on a CPU too, so scoring many labels goes far faster this way. Prompts may
    differ in length: a `RaggedDecoder` prefills each alone and keeps every row at its own position,
    so a row's logits are those it would have alone (no padding is fed)."""
    if not model.config.causal:
        raise ValueError("sample_trajectories needs a causal model (model.causal=true): a bidirectional model's "
                         "cached keys go stale as the trajectory grows")
    longest, block, m = max(len(p) for p in prompts), model.config.block_size, len(prompts)
    if longest + max_new_tokens > block:
        raise ValueError(f"prompt {longest} + max_new_tokens {max_new_tokens} exceeds block_size {block}; "
                         f"cut the prompt with prompt_ids(max_len=block_size - max_new_tokens)")
    device = next(model.parameters()).device
    ends = _Ends(model.config.vocab_size, outcome_ids, stop_ids, censor_ids, token_minutes, horizon_minutes,
                 m * n, device)
    decoding = Decoding(temperature=temperature, max_new_tokens=max_new_tokens)
    decoder = RaggedDecoder(model, prompts, max_new_tokens)
    last = decoder.first
    one_step = last.softmax(-1)[:, ends.is_outcome].sum(-1).tolist()
    fan = torch.arange(m, device=device).repeat_interleave(n)  # prompt i's rows are i*n … i*n + n − 1
    decoder.reorder(fan)  # n copies of each prompt's cache
    last = last[fan]
    for step in range(max_new_tokens):
        nxt = ends.draw_hazard(last, temperature, generator) if hazard else next_token(last, decoding, generator)
        keep = ends.update(nxt)  # on the host: deciding here needs no further device sync
        if not keep.any() or step == max_new_tokens - 1:
            break
        # finished rows leave the batch once they are a quarter of it: dropping them at every
        # step would copy the whole cache each time, which costs more than carrying them a while
        if 4 * int((~keep).sum()) >= len(keep):
            rows = torch.as_tensor(np.flatnonzero(keep), device=device)
            decoder.reorder(rows)  # drop the finished rows
            ends.keep(rows)
            nxt = nxt[rows]
        last = decoder(nxt)
    return [ends.result(one_step[i], slice(i * n, (i + 1) * n)) for i in range(m)]


class _Ends:
    """How the live trajectories end: an outcome token within the horizon, a stop token, a censor
    token, or the horizon passed (summed interval tokens); counts each, and keeps every row's end
    kind and elapsed minutes (rows still live at the end are UNFINISHED) for estimate_risk."""

    def __init__(self, vocab_size: int, outcome_ids: list[int], stop_ids: list[int], censor_ids: list[int],
                 token_minutes: np.ndarray, horizon_minutes: float, n: int, device: torch.device):
        self.is_outcome = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        self.is_outcome[outcome_ids] = True
        self.is_censor = torch.zeros_like(self.is_outcome)
        self.is_censor[list(censor_ids)] = True
        self.is_stop = self.is_censor.clone()
        self.is_stop[stop_ids] = True
        self.minutes = torch.as_tensor(token_minutes, dtype=torch.float64, device=device)
        self.horizon = horizon_minutes
        self.elapsed = torch.zeros(n, dtype=torch.float64, device=device)
        self.live = np.arange(n)  # original row of each batch row
        self.kind, self.when = np.full(n, UNFINISHED), np.zeros(n)
        self.tokens = np.zeros(n, dtype=np.int64)  # new tokens drawn per original row
        self.active = torch.ones(n, dtype=torch.bool, device=device)  # batch rows not yet ended
        # the host copy of `active`, kept in step with it from the flags update() fetches anyway:
        # every .cpu() of a device tensor is a sync, so update() makes two and the loop none
        self.active_rows = np.ones(n, dtype=bool)
        self.log_survival = np.zeros(n)  # hazard sampling: Σ log(1 − h') per original row

    def draw_hazard(self, logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
        """Accumulate each live row's outcome hazard (censoring removed), then draw the next token
        with the outcome and censor tokens masked out (module docstring)."""
        probs = torch.softmax(logits.double() / temperature, dim=-1)
        h = probs[:, self.is_outcome].sum(-1) / (1 - probs[:, self.is_censor].sum(-1)).clamp_min(1e-12)
        a = self.active_rows
        self.log_survival[self.live[a]] += torch.log1p(-h.clamp(max=1.0)).cpu().numpy()[a]
        masked = probs.masked_fill(self.is_outcome | self.is_censor, 0.0)
        empty = masked.sum(-1) == 0  # all mass on outcome/censor: the row's risk is already 1; go on with any other token
        if bool(empty.any()):
            masked[empty] = (~(self.is_outcome | self.is_censor)).double()
        return torch.multinomial(masked, 1, generator=generator).squeeze(1)

    def update(self, nxt: torch.Tensor) -> np.ndarray:
        """Record the active rows that end with token nxt (B,); returns which rows go on, on the host
        (rows that ended earlier but are still in the batch never go on and are not recorded again)."""
        self.tokens[self.live[self.active_rows]] += 1
        self.elapsed += self.minutes[nxt]
        hit = self.is_outcome[nxt] & (self.elapsed <= self.horizon) & self.active
        over = (self.elapsed > self.horizon) & self.active
        stop = self.is_stop[nxt] & ~hit & ~over & self.active
        censor = stop & self.is_censor[nxt]
        mins = self.elapsed.cpu().numpy()
        flags = torch.stack((hit, over, stop & ~censor, censor)).cpu().numpy()
        for m, k in zip(flags, (OUTCOME, HORIZON, STOP, CENSORED)):
            self.kind[self.live[m]], self.when[self.live[m]] = k, mins[m]
        self.active &= ~(hit | over | stop)
        self.active_rows = self.active_rows & ~flags.any(0)  # stop = (stop & ~censor) | censor
        return self.active_rows.copy()

    def keep(self, rows: torch.Tensor) -> None:
        self.elapsed, self.active = self.elapsed[rows], self.active[rows]
        kept = rows.cpu().numpy()
        self.live, self.active_rows = self.live[kept], self.active_rows[kept]

    def result(self, one_step: float, rows: slice) -> TrajectoryResult:
        """The TrajectoryResult of original rows `rows` (one prompt's n trajectories)."""
        left = self.kind[self.live] == UNFINISHED
        self.when[self.live[left]] = self.elapsed.cpu().numpy()[left]
        kind, when = self.kind[rows], self.when[rows]
        count = np.bincount(kind, minlength=len(END_NAMES))
        return TrajectoryResult(count[OUTCOME] / len(kind), one_step, int(count[OUTCOME]), int(count[STOP]),
                                int(count[HORIZON]), int(count[UNFINISHED]), int(self.tokens[rows].sum()),
                                int(count[CENSORED]), kind, when, row_risk=-np.expm1(self.log_survival[rows]))


CENSORING_ESTIMATORS = ("naive", "complete_case", "km")  # from how sampled rows ended (estimate_risk)
ESTIMATORS = (*CENSORING_ESTIMATORS, "hazard")  # hazard: its own sampling (sample_trajectories(hazard=True))


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
    if estimator == "hazard":
        raise ValueError("the hazard estimator is not computed from trajectory ends: sample with "
                         "sample_trajectories(hazard=True) and average its row_risk")
    if estimator != "km":
        raise ValueError(f"risk estimator {estimator!r}: choose one of {list(ESTIMATORS)}")
    survival = 1.0
    for t in np.unique(when[kind == OUTCOME]):
        at_risk = int((~censored).sum() - ((kind == OUTCOME) & (when < t)).sum() + (censored & (when >= t)).sum())
        events = int(((kind == OUTCOME) & (when == t)).sum())
        survival *= 1 - events / at_risk
    return 1 - survival


def horizon_token_budget(tok: EHRTokenizer, timelines: dict, sids: np.ndarray, times: np.ndarray,
                         horizon_minutes: float, quantile: float = 0.99, end_ids=()) -> tuple[int, int]:
    """(the `quantile` of the number of new tokens a trajectory drawn from the training records
    themselves would take to end, the number of labels it was measured on). Ending is the
    sampler's rule applied to the record after the prompt: the token whose summed interval
    minutes pass the horizon, or the first token in `end_ids` (the task's outcome, stop and
    censor tokens), counted inclusive; a record that runs out first counts all its tokens.
    Counting on past an outcome would charge, e.g., a whole readmission stay to every prompt of a
    30-day task and cut its prompts shorter than they need be."""
    counts, encoded = [], {}  # a subject's labels share one encoding
    ends = np.zeros(tok.vocab_size, dtype=bool)
    ends[list(end_ids)] = True
    minutes = np.asarray(tok.token_minutes, dtype=np.float64)
    for s, t in zip(sids, times):
        tl = timelines.get(int(s))
        if tl is None:
            continue
        if int(s) not in encoded:
            ids, tt, plen = tok.encode_with_times(tl)
            encoded[int(s)] = np.asarray(ids), tt, plen
        ids, tt, plen = encoded[int(s)]
        # the prompt ends before the first token known after t, less the interval tokens leading
        # to it (they carry the previous event's time but belong to the next event: prompt_ids)
        k = plen + int(np.searchsorted(tt[plen:], t, side="right"))
        while k > plen and minutes[ids[k - 1]] > 0:
            k -= 1
        after = ids[k:]
        done = np.flatnonzero((np.cumsum(minutes[after]) > horizon_minutes) | ends[after])
        counts.append(int(done[0]) + 1 if len(done) else len(after))
    if not counts:
        raise ValueError("no training label to measure the token rate on: set max_new_tokens to a number")
    return int(np.ceil(np.quantile(counts, quantile))), len(counts)
