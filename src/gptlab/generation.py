"""Decoding: turn a model's next-token logits into text, one token at a time.

A `Decoding` (gptlab.decoding) says what to decode; here are the loops that do it: a `Decoder` that
feeds the growing sequence through a KV cache of its own, the sampling loop (`stream`, `generate`),
a beam search (`beam_search`) and text on top (`TextStream`, `generate_text`). Greedy and beam
search return exactly what transformers' `generate` returns on the same weights.

Context longer than block_size: the model sees only the last block_size tokens (prompts are
cropped from the left). Positions are absolute and learned, so once the window slides every cached
key belongs to a shifted position: the Decoder then recomputes the whole window each step. The
result is exactly the uncached one; the cost per token grows to a full block_size forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from gptlab.decoding import Decoding, check_prompt, next_token
from gptlab.errors import UserError
from gptlab.model import KVCache, KVCacheRows

__all__ = ["BeamSearchOutput", "Decoder", "Decoding", "RaggedDecoder", "TextStream", "beam_search", "generate", "generate_text",
           "stream", "token_logprobs"]

# ---- feeding the model -------------------------------------------------------------------------------
def _forward_last(model, idx: torch.Tensor, pos: int, cache: KVCache | None) -> torch.Tensor:
    return model.forward_last(idx, pos, cache)


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

    The cache belongs to this Decoder (one decode), never to the model, so decodes on one model
    cannot see each other's keys. Once the sequence is longer than block_size the window slides,
    the cache is dropped and every step recomputes the last block_size tokens (see the module
    docstring). A bidirectional model (config.causal False) never uses the cache: its earlier keys
    depend on the later tokens, so re-reading the whole window is the only way to ask it for a next
    token. compile=True runs the one-token steps through `compiled_step` (the prefill and the
    sliding window stay eager). max_len bounds the cache (default block_size)."""

    def __init__(self, model, batch_size: int, use_cache: bool = True, compile: bool = False,
                 max_len: int | None = None):
        self.model = model
        self.block_size = model.config.block_size
        self.step = compiled_step() if compile else _forward_last
        self.cached = 0  # positions held in the cache
        use_cache = use_cache and model.config.causal
        self.cache: KVCache | None = model.new_kv_cache(batch_size, max_len) if use_cache else None

    @torch.inference_mode()
    def __call__(self, seq: torch.Tensor) -> torch.Tensor:
        """Float logits (B, V) for the token after seq (B, T)."""
        T = seq.size(1)
        if T > self.block_size:
            self.cache = None
        if self.cache is None:
            return self.model.forward_last(seq[:, -self.block_size:]).float()
        step = self.step if T - self.cached == 1 else _forward_last
        logits = step(self.model, seq[:, self.cached:], self.cached, self.cache)
        self.cached = T
        return logits.float()

    def reorder(self, index: torch.Tensor) -> None:
        """Row i of the cache becomes row index[i] (beam search; a fan-out or dropped rows change the
        number of rows)."""
        if self.cache is not None:
            self.cache.reorder(index, self.cached)


class RaggedDecoder:
    """Next-token logits of rows that started from prompts of different lengths, in one batch.

    Each prompt is prefilled alone into its own row of one KV cache (so its first logits are exactly
    a decode of it alone); after that every call feeds one token per row, row b at its own position
    pos[b], and row b attends to its own keys only (model.KVCacheRows; the model masks the rest). No
    padding token is ever fed, so a row's logits do not depend on the other rows. A step's attention
    spans the longest row: rows of similar lengths waste the least. Causal models only, and every
    prompt plus max_new_tokens must fit in block_size (the window never slides)."""

    def __init__(self, model, prompts: list[list[int]], max_new_tokens: int):
        if not model.config.causal:
            raise ValueError("RaggedDecoder needs a causal model: a bidirectional model's cached keys go stale")
        lengths = [len(p) for p in prompts]
        if min(lengths) < 1 or max(lengths) + max_new_tokens > model.config.block_size:
            raise ValueError(f"prompts of {min(lengths)}..{max(lengths)} tokens + max_new_tokens {max_new_tokens} "
                             f"must fit in block_size {model.config.block_size}")
        self.model = model
        device = next(model.parameters()).device
        self.cache = model.new_kv_cache(len(prompts), max(lengths) + max_new_tokens)
        self.pos = torch.tensor(lengths, dtype=torch.long, device=device)  # each row's next position
        self.keys = max(lengths)  # positions filled in the longest row (host side: no sync per step)
        with torch.inference_mode():
            self.first = torch.cat([
                model.forward_last(torch.tensor([p], device=device), 0, KVCacheRows(self.cache, i, i + 1))
                for i, p in enumerate(prompts)]).float()  # (len(prompts), V): each prompt's next-token logits

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed tokens (B,), one per row; float logits (B, V) of each row's next token."""
        self.keys += 1
        logits = self.model.forward_last(tokens[:, None], self.pos, KVCacheRows(self.cache, 0, len(tokens), self.keys))
        self.pos += 1
        return logits.float()

    def reorder(self, index: torch.Tensor) -> None:
        """Row i becomes old row index[i] (a fan-out of each prompt to n rows, or finished rows dropped)."""
        self.cache.reorder(index, self.keys)
        self.pos = self.pos[index]


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
def stream(model, idx: torch.Tensor, decoding: Decoding, *,
           generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), as soon as it is chosen (sample or greedy).

    A row that has produced eos_token_id keeps producing it; the stream ends early when every row
    has. generator overrides decoding.seed (a caller drawing several samples from one stream of
    random numbers passes its own)."""
    d = decoding
    if d.strategy == "beam":
        raise ValueError("stream() decodes strategy 'sample' or 'greedy'; use beam_search() for beams")
    check_prompt(idx, model.config.vocab_size)
    generator = generator if generator is not None else d.generator(idx.device)
    B, T = idx.shape
    seq = idx.new_empty(B, T + d.max_new_tokens)  # preallocated: no torch.cat per step
    seq[:, :T] = idx
    finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
    with _eval_mode(model):
        decoder = Decoder(model, B, d.use_cache, d.compile)
        for t in range(T, T + d.max_new_tokens):
            nxt = next_token(decoder(seq[:, :t]), d, generator)
            if d.eos_token_id is not None:
                nxt = nxt.masked_fill(finished, d.eos_token_id)
                finished |= nxt == d.eos_token_id
            seq[:, t] = nxt
            yield nxt
            if d.eos_token_id is not None and bool(finished.all()):
                return


# ---- beam search -------------------------------------------------------------------------------------
@dataclass
class BeamSearchOutput:
    """Finished hypotheses per prompt, best first: sequences (B, num_beams, L), padded after EOS
    with eos_token_id, and scores (B, num_beams) = sum of log-probs / generated_length**length_penalty."""

    sequences: torch.Tensor
    scores: torch.Tensor
    lengths: torch.Tensor  # (B, num_beams) generated tokens, EOS included


NEG = -1e9  # the score of a candidate that must not be chosen


@dataclass
class _Beams:
    """The state of a beam search over B prompts × k beams, sequences of length L."""

    seqs: torch.Tensor  # (B, k, L) the running beams
    running: torch.Tensor  # (B, k) their summed log-probs
    best: torch.Tensor  # (B, k, L) the finished hypotheses, best first
    best_scores: torch.Tensor  # (B, k) their length-penalised scores
    best_done: torch.Tensor  # (B, k) which slots hold a real hypothesis
    best_len: torch.Tensor  # (B, k) their generated lengths
    improvable: torch.Tensor  # (B, 1) can a running beam still beat the worst finished one
    ended_all: bool = False  # every candidate of the last step ended

    @classmethod
    def start(cls, idx: torch.Tensor, k: int, L: int, fill: int) -> _Beams:
        B, T = idx.shape
        seqs = idx.new_full((B, k, L), fill)
        seqs[:, :, :T] = idx[:, None, :]
        # only the first beam starts alive, so the first step does not pick the same token k times
        running = torch.zeros(B, k, device=idx.device)
        running[:, 1:] = NEG
        zeros = torch.zeros(B, k, dtype=torch.long, device=idx.device)
        return cls(seqs, running, seqs.clone(), torch.full((B, k), NEG, device=idx.device), zeros.bool(), zeros,
                   torch.ones(B, 1, dtype=torch.bool, device=idx.device))

    def step(self, logp: torch.Tensor, t: int, n: int, d: Decoding) -> tuple[torch.Tensor, torch.Tensor]:
        """Extend by token t (the n-th generated) from log-probs (B·k, V); returns (src, keep): the
        candidates' source beams and which candidates keep running."""
        (B, k, L), V = self.seqs.shape, logp.size(-1)
        logp = (logp.view(B, k, V) + self.running[:, :, None]).view(B, k * V)
        # 2k candidates, so that k stay running even if k of them end
        cand_scores, cand = torch.topk(logp, 2 * k, dim=-1)
        src, tok = cand // V, cand % V
        cand_seqs = self.seqs.gather(1, src[:, :, None].expand(B, 2 * k, L)).clone()
        cand_seqs[:, :, t] = tok
        ends = tok == d.eos_token_id if d.eos_token_id is not None else torch.zeros_like(tok, dtype=torch.bool)
        if t == L - 1:  # the last step ends every candidate
            ends = torch.ones_like(ends)
        # the best candidates that do not end keep running
        keep = torch.topk(cand_scores + ends.float() * NEG, k, dim=-1).indices
        self.seqs = cand_seqs.gather(1, keep[:, :, None].expand(B, k, L))
        self.running = (cand_scores + ends.float() * NEG).gather(1, keep)
        self._finish(cand_seqs, cand_scores, ends, n, d)
        self.ended_all = bool(ends.all())
        return src, keep

    def _finish(self, cand_seqs: torch.Tensor, cand_scores: torch.Tensor, ends: torch.Tensor, n: int,
                d: Decoding) -> None:
        """Ended candidates among the first k join the finished hypotheses if good enough."""
        B, k, L = self.best.shape
        new_done = ends & (torch.arange(2 * k, device=ends.device) < k)
        scores = cand_scores / (n**d.length_penalty)
        full = self.best_done.all(dim=-1, keepdim=True) & (d.early_stopping is True)
        scores = scores + full.float() * NEG + (~self.improvable).float() * NEG + (~new_done) * NEG
        merged = torch.topk(torch.cat([self.best_scores, scores], 1), k, dim=-1).indices
        self.best = torch.cat([self.best, cand_seqs], 1).gather(1, merged[:, :, None].expand(B, k, L))
        self.best_scores = torch.cat([self.best_scores, scores], 1).gather(1, merged)
        self.best_done = torch.cat([self.best_done, new_done], 1).gather(1, merged)
        lengths = torch.full_like(new_done, n, dtype=torch.long)
        self.best_len = torch.cat([self.best_len, lengths], 1).gather(1, merged)

    def finished(self, n: int, d: Decoding) -> bool:
        """As transformers: stop when no running beam can beat the worst of k finished hypotheses
        (judged at length n; at max_new_tokens for early_stopping="never" with length_penalty > 0),
        when early_stopping=True and k hypotheses are finished, or when every candidate ended."""
        m = d.max_new_tokens if d.early_stopping == "never" and d.length_penalty > 0 else n
        best_possible = self.running[:, :1] / (m**d.length_penalty)
        worst = torch.where(self.best_done, self.best_scores.min(dim=1, keepdim=True).values, NEG)
        self.improvable = self.improvable & (best_possible > worst).any(dim=-1, keepdim=True)
        all_full = bool(self.best_done.all()) and d.early_stopping is True
        return not bool(self.improvable.any()) or all_full or self.ended_all


def beam_search(model, idx: torch.Tensor, decoding: Decoding) -> BeamSearchOutput:
    """Beam search with transformers' semantics (GenerationMixin._beam_search, do_sample=False).

    Each step scores all num_beams × V continuations by summed log-probability and keeps the best
    2·num_beams candidates: the first num_beams of them that end (EOS, or the last step) become
    finished hypotheses scored sum_logprob / generated_length**length_penalty (the length counts
    EOS); the best num_beams that do not end keep running. The search stops at max_new_tokens or
    when `_Beams.finished` says no running beam can improve the result.
    """
    d = decoding
    if d.strategy != "beam":
        raise ValueError(f"beam_search() needs a Decoding with strategy='beam', got {d.strategy!r}")
    check_prompt(idx, model.config.vocab_size)
    (B, T), k = idx.shape, d.num_beams
    if d.max_new_tokens == 0:
        zeros = torch.zeros(B, k, device=idx.device)
        return BeamSearchOutput(idx[:, None].expand(B, k, T).clone(), zeros, zeros.long())
    L = T + d.max_new_tokens
    beams = _Beams.start(idx, k, L, -1 if d.eos_token_id is None else d.eos_token_id)
    offset = torch.arange(B, device=idx.device)[:, None] * k
    with _eval_mode(model), torch.inference_mode():
        decoder = Decoder(model, B * k, d.use_cache, d.compile)
        for t in range(T, L):
            logp = F.log_softmax(decoder(beams.seqs.view(B * k, L)[:, :t]), dim=-1)
            src, keep = beams.step(logp, t, t + 1 - T, d)
            decoder.reorder((offset + src.gather(1, keep)).view(-1))
            if beams.finished(t + 1 - T, d):
                break
    n = int(beams.best_len.max())
    return BeamSearchOutput(beams.best[:, :, : T + n], beams.best_scores, beams.best_len)


# ---- one entry point ---------------------------------------------------------------------------------
def generate(model, idx: torch.Tensor, decoding: Decoding, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue idx (B, T) by up to decoding.max_new_tokens tokens; returns (B, T + new).

    Sample and greedy go through `stream`; beam returns `beam_search`'s best hypothesis per row
    (`beam_search` itself gives all of them with their scores). Rows that end with eos_token_id
    earlier than others are padded with it.
    """
    if decoding.strategy == "beam":
        out = beam_search(model, idx, decoding)
        return out.sequences[:, 0, : idx.size(1) + int(out.lengths[:, 0].max())]
    new = list(stream(model, idx, decoding, generator=generator))
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx.clone()


# ---- text --------------------------------------------------------------------------------------------
class TextStream:
    """Token ids in, text out as soon as it is safe to show.

    Holds back (a) a trailing U+FFFD, which is what an unfinished UTF-8 character decodes to while
    a byte-level BPE token still owes the character's remaining bytes, and (b) any tail that could be
    the start of a stop string. Ends at the first stop string (cut before it) or at `eos_token_id`.
    `tok` is anything with decode(list[int]) -> str.
    """

    def __init__(self, tok: Any, stop: Iterable[str] = (), eos_token_id: int | None = None):
        self.tok, self.stop, self.eos = tok, [s for s in stop if s], eos_token_id
        self.ids: list[int] = []
        self.text = ""
        self.shown = 0
        self.done = False

    def push(self, token_id: int) -> str:
        """Add one token; return the newly safe text (may be empty)."""
        if self.done:
            return ""
        if token_id == self.eos:
            self.done = True
            return self.flush()
        self.ids.append(token_id)
        text = self.tok.decode(self.ids)
        cuts = [i for i in (text.find(s, max(0, self.shown - len(s))) for s in self.stop) if i >= 0]
        if cuts:
            self.text, self.done = text[: min(cuts)], True
            return self.flush()
        self.text = text
        # the stop-string prefixes are judged before the unfinished character: its missing bytes may
        # complete one (stop "日本" when a token brings "日" and half of "本")
        body = text[:-1] if text.endswith("\ufffd") else text
        hold = 0
        for s in self.stop:
            hold = max([hold] + [n for n in range(1, len(s)) if body.endswith(s[:n])])
        return self._take(len(body) - hold)

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        out = self.text[self.shown : max(end, self.shown)]
        self.shown += len(out)
        return out


def generate_text(model, tok, prompt: str, decoding: Decoding) -> str:
    """The decoded continuation of `prompt` (text in, text out): the one helper behind samples
    during training, after training and in reports; eos_token_id and stop strings end the text.

    An empty prompt starts from the tokenizer's end-of-text token; a long one keeps its last
    block_size tokens. Sampling draws from its own generator seeded with decoding.seed (0 when
    None), never the global RNG, so a sample is reproducible and leaves a training run's random
    stream untouched.
    """
    ids = tok.encode(prompt) or ([tok.eot_token_id] if tok.eot_token_id is not None else [])
    if not ids:
        raise UserError(f"the prompt {prompt!r} encodes to no tokens and the tokenizer has no end-of-text "
                         f"token to start from; give at least one character")
    ids = ids[-model.config.block_size:]
    device = next(model.parameters()).device
    if decoding.seed is None:
        decoding = decoding.replace(seed=0)
    out = generate(model, torch.tensor([ids], dtype=torch.long, device=device), decoding)
    text = TextStream(tok, decoding.stop, decoding.eos_token_id)
    for token_id in out[0, len(ids):].tolist():
        text.push(token_id)
    return text.text


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
