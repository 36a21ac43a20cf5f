"""What to decode: the `Decoding` description, its checks, and the logits processors it names.

Logits processors run temperature → top-k → top-p, Hugging Face's order and semantics, then a
chooser takes the argmax or one multinomial draw. No model here: gptlab.generation feeds the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch.nn import functional as F

from gptlab.errors import UserError

STRATEGIES = ("sample", "greedy", "beam")
EARLY_STOPPING = (False, True, "never")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or ()
        object.__setattr__(self, "stop", tuple(stop))
        for error in (*self._sampling_errors(), *self._beam_errors()):
            raise UserError(error)

    def _sampling_errors(self) -> Iterator[str]:
        if self.strategy not in STRATEGIES:
            yield f"strategy must be one of {STRATEGIES}, got {self.strategy!r}"
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            yield f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}"
        if not _is_number(self.temperature) or not self.temperature >= 0:  # also rejects NaN
            yield f"temperature must be >= 0 (0 means greedy), got {self.temperature}"
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            yield f"top_k must be an integer >= 1 (or None to disable), got {self.top_k!r}"
        if self.top_p is not None and (not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0):
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
        if not _is_number(self.length_penalty):
            yield f"length_penalty must be a number, got {self.length_penalty!r}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decoding:
        """From a mapping (a conf/decoding entry), refusing keys that are not fields."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise UserError(f"decoding: unknown keys {unknown}; allowed: {names}")
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
