"""Decoding: turn a model's next-token logits into text, one token at a time.

Built from small pieces: logits processors (temperature → top-k → top-p, Hugging Face's order and
semantics), a chooser (argmax or multinomial), a `Decoder` that feeds the growing sequence through
the KV cache, the sampling loop (`stream`, `generate`) and a beam search (`beam_search`). Greedy and
beam search return exactly what transformers' `generate` returns on the same weights.

Context longer than block_size: the model sees only the last block_size tokens (prompts are
cropped from the left). Positions are absolute and learned, so once the window slides every cached
key belongs to a shifted position: the Decoder then recomputes the whole window each step. The
result is exactly the uncached one; the cost per token grows to a full block_size forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.nn import functional as F

STRATEGIES = ("sample", "greedy", "beam")
EARLY_STOPPING = (False, True, "never")


def validate(
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    *,
    strategy: str = "sample",
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
) -> None:
    """Raise ValueError naming the bad decoding parameter and what is allowed."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not temperature >= 0:  # also rejects NaN
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None to disable), got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (or None to disable), got {top_p}")
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if strategy != "beam" and num_beams != 1:
        raise ValueError(f"num_beams={num_beams} needs strategy='beam' (got strategy={strategy!r})")
    if strategy == "beam" and (temperature != 1.0 or top_k is not None or top_p is not None):
        raise ValueError(
            "strategy='beam' is deterministic (transformers' do_sample=False): temperature, top_k and "
            f"top_p apply to strategy='sample'; got temperature={temperature}, top_k={top_k}, top_p={top_p}"
        )
    if early_stopping not in EARLY_STOPPING or not isinstance(early_stopping, (bool, str)):
        raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, got {early_stopping!r}")
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool):
        raise ValueError(f"length_penalty must be a number, got {length_penalty!r}")


def check_prompt(idx: torch.Tensor, vocab_size: int) -> None:
    """Raise ValueError for a prompt the model cannot read, naming its shape or ids, rather than an
    IndexError deep in the forward."""
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be a (batch, time) tensor of token ids with at least one token, got shape "
                         f"{tuple(idx.shape)} (an empty prompt can start from the end-of-text token)")
    lo, hi = (int(idx.min()), int(idx.max())) if idx.numel() else (0, 0)
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"idx holds token ids {lo}..{hi}, outside the model's vocabulary 0..{vocab_size - 1}; "
                         f"was the prompt encoded with another tokenizer?")


# ---- logits processors: (B, V) → (B, V), filtered entries set to -inf -------------------------------
def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / temperature


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits per row.

    nanoGPT and transformers keep every logit tied with the k-th, so a flat row keeps more than k
    tokens; here ties at the boundary go to the lowest token ids, so exactly k survive.
    """
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    above = logits > kth
    tied = logits == kth
    room = k - above.sum(dim=-1, keepdim=True)  # how many of the tied values still fit
    keep = above | (tied & (tied.cumsum(dim=-1) <= room))
    return logits.masked_fill(~keep, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most probable tokens whose probability reaches p (at least one).

    Written as transformers' TopPLogitsWarper (ascending sort, drop while the cumulative mass is
    <= 1 - p) so that float rounding at the boundary falls the same way."""
    sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= 1 - p
    drop[..., -1] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def process_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Temperature, then top-k, then top-p: transformers' order. temperature 0 is left to `choose`."""
    if temperature not in (0.0, 1.0):
        logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = apply_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = apply_top_p(logits, top_p)
    return logits


def choose(logits: torch.Tensor, greedy: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits → (B,) token ids: the argmax, or one draw from softmax(logits)."""
    if greedy:
        return logits.argmax(dim=-1)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator).squeeze(1)


# ---- feeding the model -------------------------------------------------------------------------------
def _forward_last(model, idx: torch.Tensor, pos: int) -> torch.Tensor:
    return model.forward_last(idx, pos)


@functools.cache
def compiled_step() -> Callable[..., torch.Tensor]:
    """`model.forward_last` under torch.compile (inductor: generated C++ on CPU), for one-token steps.

    One compiled function for every model: Dynamo guards on the model's structure, not its identity,
    so a second model of the same shape reuses the code. dynamic=True makes the position symbolic,
    so the growing cache compiles once rather than at every length (a new batch size compiles again).
    The fused kernels round differently from eager ones, so tokens may in principle differ; the
    first call pays the compile time (~13 s for a tiny model, ~30-40 s for GPT-2 small here)."""
    return torch.compile(_forward_last, dynamic=True)


class Decoder:
    """Next-token logits of a growing sequence: one prefill, then one token per step via the KV cache.

    Once the sequence is longer than block_size the window slides, the cache is dropped and every
    step recomputes the last block_size tokens (see the module docstring). A bidirectional model
    (config.causal False) never uses the cache: its earlier keys depend on the later tokens, so
    re-reading the whole window is the only way to ask it for a next token. compile=True runs the
    one-token steps through `compiled_step` (the prefill and the sliding window stay eager)."""

    def __init__(self, model, batch_size: int, use_cache: bool = True, compile: bool = False):
        self.model = model
        self.block_size = model.config.block_size
        self.use_cache = use_cache and model.config.causal
        self.step = compiled_step() if compile else _forward_last
        self.cached = 0  # positions held in the cache
        if self.use_cache:
            model.setup_kv_cache(batch_size)

    @torch.inference_mode()
    def __call__(self, seq: torch.Tensor) -> torch.Tensor:
        """Float logits (B, V) for the token after seq (B, T)."""
        T = seq.size(1)
        if self.use_cache and T > self.block_size:
            self.close()
        if not self.use_cache:
            return self.model.forward_last(seq[:, -self.block_size:]).float()
        step = self.step if T - self.cached == 1 else _forward_last
        logits = step(self.model, seq[:, self.cached:], self.cached)
        self.cached = T
        return logits.float()

    def reorder(self, index: torch.Tensor) -> None:
        """Row i of the cache becomes row index[i] (beam search)."""
        if self.use_cache:
            self.model.reorder_kv_cache(index, self.cached)

    def close(self) -> None:
        if self.use_cache:
            self.model.clear_kv_cache()
            self.use_cache = False


@contextmanager
def _eval_mode(model) -> Iterator[None]:
    """Eval mode (no dropout) for the duration of a decode; the previous mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ---- sampling and greedy -----------------------------------------------------------------------------
def stream(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    strategy: str = "sample",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    use_cache: bool = True,
    compile: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), as soon as it is chosen (sample or greedy).

    A row that has produced eos_token_id keeps producing it; the stream ends early when every row
    has. temperature 0 means greedy. generator=None draws from torch's global RNG, as transformers does.
    """
    validate(max_new_tokens, temperature, top_k, top_p, strategy=strategy)
    check_prompt(idx, model.config.vocab_size)
    if strategy == "beam":
        raise ValueError("stream() decodes strategy 'sample' or 'greedy'; use beam_search() for beams")
    greedy = strategy == "greedy" or temperature == 0
    B, T = idx.shape
    seq = idx.new_empty(B, T + max_new_tokens)  # preallocated: no torch.cat per step
    seq[:, :T] = idx
    finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
    with _eval_mode(model):
        decoder = Decoder(model, B, use_cache, compile)
        try:
            for t in range(T, T + max_new_tokens):
                logits = decoder(seq[:, :t])
                if not greedy:
                    logits = process_logits(logits, temperature, top_k, top_p)
                nxt = choose(logits, greedy, generator)
                if eos_token_id is not None:
                    nxt = nxt.masked_fill(finished, eos_token_id)
                    finished |= nxt == eos_token_id
                seq[:, t] = nxt
                yield nxt
                if eos_token_id is not None and bool(finished.all()):
                    return
        finally:
            decoder.close()


# ---- beam search -------------------------------------------------------------------------------------
@dataclass
class BeamSearchOutput:
    """Finished hypotheses per prompt, best first: sequences (B, num_beams, L), padded after EOS
    with eos_token_id, and scores (B, num_beams) = sum of log-probs / generated_length**length_penalty."""

    sequences: torch.Tensor
    scores: torch.Tensor
    lengths: torch.Tensor  # (B, num_beams) generated tokens, EOS included


def beam_search(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    num_beams: int,
    *,
    length_penalty: float = 1.0,
    eos_token_id: int | None = None,
    early_stopping: bool | str = False,
    use_cache: bool = True,
    compile: bool = False,
) -> BeamSearchOutput:
    """Beam search with transformers' semantics (GenerationMixin._beam_search, do_sample=False).

    Each step scores all num_beams × V continuations by summed log-probability and keeps the best
    2·num_beams candidates: the first num_beams of them that end (EOS, or the last step) become
    finished hypotheses scored sum_logprob / generated_length**length_penalty (the length counts
    EOS); the best num_beams that do not end keep running. The search stops at max_new_tokens or,
    as in transformers, when no running beam could beat the worst of num_beams finished ones
    (early_stopping=False: judged at the current length; "never": at the longest length when
    length_penalty > 0; True: stop as soon as num_beams hypotheses are finished).
    """
    validate(max_new_tokens, strategy="beam", num_beams=num_beams, length_penalty=length_penalty,
             early_stopping=early_stopping)
    check_prompt(idx, model.config.vocab_size)
    B, T = idx.shape
    if max_new_tokens == 0:
        zeros = torch.zeros(B, num_beams, device=idx.device)
        return BeamSearchOutput(idx[:, None].expand(B, num_beams, T).clone(), zeros, zeros.long())
    k, K = num_beams, 2 * num_beams  # K candidates, so that num_beams stay running even if num_beams end
    L = T + max_new_tokens
    fill = -1 if eos_token_id is None else eos_token_id
    seqs = idx.new_full((B, k, L), fill)
    seqs[:, :, :T] = idx[:, None, :]
    # only the first beam starts alive, so the first step does not pick the same token k times
    running = torch.zeros(B, k, device=idx.device)
    running[:, 1:] = -1e9
    best = seqs.clone()
    best_scores = torch.full((B, k), -1e9, device=idx.device)
    best_done = torch.zeros(B, k, dtype=torch.bool, device=idx.device)
    best_len = torch.zeros(B, k, dtype=torch.long, device=idx.device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=idx.device)
    first_k = torch.arange(K, device=idx.device) < k
    offset = torch.arange(B, device=idx.device)[:, None] * k
    with _eval_mode(model), torch.inference_mode():
        decoder = Decoder(model, B * k, use_cache, compile)
        try:
            for t in range(T, L):
                logp = F.log_softmax(decoder(seqs.view(B * k, L)[:, :t]), dim=-1)
                V = logp.size(-1)
                logp = (logp.view(B, k, V) + running[:, :, None]).view(B, k * V)
                cand_scores, cand = torch.topk(logp, K, dim=-1)
                src, tok = cand // V, cand % V
                cand_seqs = seqs.gather(1, src[:, :, None].expand(B, K, L)).clone()
                cand_seqs[:, :, t] = tok
                ends = tok == eos_token_id if eos_token_id is not None else torch.zeros_like(tok, dtype=torch.bool)
                if t == L - 1:  # the last step ends every candidate
                    ends = torch.ones_like(ends)
                # the best candidates that do not end keep running
                keep = torch.topk(cand_scores + ends.float() * -1e9, k, dim=-1).indices
                seqs = cand_seqs.gather(1, keep[:, :, None].expand(B, k, L))
                running = (cand_scores + ends.float() * -1e9).gather(1, keep)
                # ended candidates among the first k join the finished hypotheses if good enough
                new_done = ends & first_k
                scores = cand_scores / ((t + 1 - T) ** length_penalty)
                full = best_done.all(dim=-1, keepdim=True) & (early_stopping is True)
                scores = scores + full.float() * -1e9 + (~improvable).float() * -1e9 + (~new_done) * -1e9
                merged = torch.topk(torch.cat([best_scores, scores], 1), k, dim=-1).indices
                best = torch.cat([best, cand_seqs], 1).gather(1, merged[:, :, None].expand(B, k, L))
                best_scores = torch.cat([best_scores, scores], 1).gather(1, merged)
                best_done = torch.cat([best_done, new_done], 1).gather(1, merged)
                best_len = torch.cat([best_len, torch.full_like(cand, t + 1 - T)], 1).gather(1, merged)
                decoder.reorder((offset + src.gather(1, keep)).view(-1))
                # can a running beam still beat the worst finished hypothesis?
                n = max_new_tokens if early_stopping == "never" and length_penalty > 0 else t + 1 - T
                best_possible = running[:, :1] / (n**length_penalty)
                worst = torch.where(best_done, best_scores.min(dim=1, keepdim=True).values, -1e9)
                improvable = improvable & (best_possible > worst).any(dim=-1, keepdim=True)
                all_full = bool(best_done.all()) and early_stopping is True
                if not bool(improvable.any()) or all_full or bool(ends.all()):
                    break
        finally:
            decoder.close()
    return BeamSearchOutput(best[:, :, : T + int(best_len.max())], best_scores, best_len)


# ---- one entry point ---------------------------------------------------------------------------------
def generate(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    strategy: str = "sample",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    eos_token_id: int | None = None,
    early_stopping: bool | str = False,
    return_beams: bool = False,
    use_cache: bool = True,
    compile: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor | BeamSearchOutput:
    """Continue idx (B, T) by up to max_new_tokens tokens; returns (B, T + new).

    strategy "sample" draws from the processed distribution (temperature 0 = greedy), "greedy"
    takes the argmax, "beam" runs `beam_search` and returns its best hypothesis per row, or with
    return_beams=True the `BeamSearchOutput` with all of them and their scores. Rows that end with
    eos_token_id earlier than others are padded with it. compile=True runs the one-token steps
    through torch.compile (`compiled_step`): faster where per-op overhead matters, not bit-exact.
    """
    validate(max_new_tokens, temperature, top_k, top_p, strategy=strategy, num_beams=num_beams,
             length_penalty=length_penalty, early_stopping=early_stopping)
    if return_beams and strategy != "beam":
        raise ValueError(f"return_beams=True needs strategy='beam' (got strategy={strategy!r})")
    if strategy == "beam":
        out = beam_search(model, idx, max_new_tokens, num_beams, length_penalty=length_penalty,
                          eos_token_id=eos_token_id, early_stopping=early_stopping, use_cache=use_cache,
                          compile=compile)
        if return_beams:
            return out
        return out.sequences[:, 0, : idx.size(1) + int(out.lengths[:, 0].max())]
    new = list(stream(model, idx, max_new_tokens, strategy=strategy, temperature=temperature, top_k=top_k,
                      top_p=top_p, eos_token_id=eos_token_id, use_cache=use_cache, compile=compile,
                      generator=generator))
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx.clone()



def generate_text(model, tok, prompt: str, max_new_tokens: int, *, seed: int = 1337, **decoding) -> str:
    """The decoded continuation of `prompt` (text in, text out): the one helper behind samples
    during training, after training and in reports.

    An empty prompt starts from the tokenizer's end-of-text token; a long one keeps its last
    block_size tokens. Sampling draws from its own generator seeded with `seed`, never the global
    RNG, so a sample is reproducible and leaves a training run's random stream untouched.
    """
    ids = tok.encode(prompt) or ([tok.eot_token_id] if tok.eot_token_id is not None else [])
    if not ids:
        raise ValueError(f"the prompt {prompt!r} encodes to no tokens and the tokenizer has no end-of-text "
                         f"token to start from; give at least one character")
    ids = ids[-model.config.block_size:]
    device = next(model.parameters()).device
    if decoding.get("strategy", "sample") == "sample":
        decoding = {**decoding, "generator": torch.Generator(device=device).manual_seed(seed)}
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = generate(model, idx, max_new_tokens, **decoding)
    return tok.decode(out[0, len(ids):].tolist())


@torch.inference_mode()
def token_logprobs(model, seq: torch.Tensor, start: int) -> torch.Tensor:
    """log p(seq[:, t] | the up to block_size tokens before it) for t >= start, (B, T - start):
    the per-token log-likelihood of a continuation under the untempered model, as decoding saw it."""
    if start < 1:
        raise ValueError(f"token_logprobs: start must be >= 1 (the first token has no context), got {start}")
    block, T = model.config.block_size, seq.size(1)
    # tokens 1..m have their whole context in the first block: one forward. Not for a bidirectional
    # model: there every position reads the later tokens, the scored one included
    m = min(T - 1, block) if model.config.causal else 0
    out = []
    with _eval_mode(model):
        if start <= m:
            logits, _ = model(seq[:, :m])
            logp = F.log_softmax(logits[:, start - 1 :].float(), dim=-1)
            out.append(logp.gather(-1, seq[:, start : m + 1, None]).squeeze(-1))
        for t in range(max(start, m + 1), T):  # later tokens: one sliding window each
            logp = F.log_softmax(model.forward_last(seq[:, max(0, t - block) : t]).float(), dim=-1)
            out.append(logp.gather(-1, seq[:, t, None]))
    return torch.cat(out, dim=1) if out else seq.new_zeros(seq.size(0), 0, dtype=torch.float)
