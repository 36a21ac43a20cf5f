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

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch.nn import functional as F

from gptlab.model import KVCache

STRATEGIES = ("sample", "greedy", "beam")
EARLY_STOPPING = (False, True, "never")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Decoding:
    """Everything that decides how a continuation is decoded: the one description that `generate`,
    `stream`, `beam_search`, `generate_text`, generate.py's conf/decoding and the TextSampler share.

    strategy "sample" draws from the processed distribution (temperature 0 = greedy), "greedy"
    takes the argmax, "beam" is transformers' beam search (deterministic: temperature, top_k and
    top_p belong to "sample"). eos_token_id ends a row; stop strings end a text (TextStream). seed:
    sampling draws from a generator seeded with it; None draws from torch's global RNG, as
    transformers does. compile runs the one-token steps through torch.compile (not bit-exact).
    Every value is checked here, once, with a message naming the field.
    """

    strategy: str = "sample"
    max_new_tokens: int = 100
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False  # beam: False | True | "never", as in transformers
    eos_token_id: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    use_cache: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(s for s in ([self.stop] if isinstance(self.stop, str) else self.stop)))
        for error in (*self._sampling_errors(), *self._beam_errors()):
            raise ValueError(error)

    def _sampling_errors(self) -> Iterator[str]:
        if self.strategy not in STRATEGIES:
            yield f"strategy must be one of {STRATEGIES}, got {self.strategy!r}"
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            yield f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}"
        if not self.temperature >= 0:  # also rejects NaN
            yield f"temperature must be >= 0 (0 means greedy), got {self.temperature}"
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            yield f"top_k must be an integer >= 1 (or None to disable), got {self.top_k!r}"
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            yield f"top_p must be in (0, 1] (or None to disable), got {self.top_p}"
        if self.eos_token_id is not None and (not _is_int(self.eos_token_id) or self.eos_token_id < 0):
            yield f"eos_token_id must be a token id >= 0 (or None), got {self.eos_token_id!r}"
        if self.seed is not None and not _is_int(self.seed):
            yield f"seed must be an integer (or None for the global RNG), got {self.seed!r}"

    def _beam_errors(self) -> Iterator[str]:
        if not _is_int(self.num_beams) or self.num_beams < 1:
            yield f"num_beams must be an integer >= 1, got {self.num_beams!r}"
        if self.strategy != "beam" and self.num_beams != 1:
            yield f"num_beams={self.num_beams} needs strategy='beam' (got strategy={self.strategy!r})"
        if self.strategy == "beam" and (self.temperature != 1.0 or self.top_k is not None or self.top_p is not None):
            yield ("strategy='beam' is deterministic (transformers' do_sample=False): temperature, top_k and top_p "
                   f"apply to strategy='sample'; got temperature={self.temperature}, top_k={self.top_k}, "
                   f"top_p={self.top_p}")
        if self.early_stopping not in EARLY_STOPPING or not isinstance(self.early_stopping, (bool, str)):
            yield f"early_stopping must be one of {EARLY_STOPPING}, got {self.early_stopping!r}"
        if not isinstance(self.length_penalty, (int, float)) or isinstance(self.length_penalty, bool):
            yield f"length_penalty must be a number, got {self.length_penalty!r}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decoding:
        """From a mapping (a conf/decoding entry), refusing keys that are not fields."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"decoding: unknown keys {unknown}; allowed: {names}")
        return cls(**d)

    def replace(self, **changes: Any) -> Decoding:
        return dataclasses.replace(self, **changes)

    @property
    def greedy(self) -> bool:
        return self.strategy == "greedy" or (self.strategy == "sample" and self.temperature == 0)

    def label(self) -> str:
        """A short name: "greedy", "beam k=4", "sample T=0.8 top_k=200"."""
        if self.greedy:
            return "greedy" if self.strategy == "greedy" else "greedy (T=0)"
        if self.strategy == "beam":
            return f"beam k={self.num_beams}" + (f" lp={self.length_penalty}" if self.length_penalty != 1.0 else "")
        parts = [f"T={self.temperature}"]
        parts += [f"{name}={getattr(self, name)}" for name in ("top_k", "top_p") if getattr(self, name) is not None]
        return "sample " + " ".join(parts)

    def generator(self, device: torch.device | str) -> torch.Generator | None:
        """A generator seeded with `seed` on `device`, or None (torch's global RNG) without a seed."""
        return None if self.seed is None else torch.Generator(device=device).manual_seed(self.seed)


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


def next_token(logits: torch.Tensor, decoding: Decoding, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits → (B,) token ids under decoding's sampling settings (sample or greedy)."""
    if not decoding.greedy:
        logits = process_logits(logits, decoding.temperature, decoding.top_k, decoding.top_p)
    return choose(logits, decoding.greedy, generator)


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
        raise ValueError(f"the prompt {prompt!r} encodes to no tokens and the tokenizer has no end-of-text "
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
