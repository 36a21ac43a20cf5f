"""Character-level tokenizer: one id per distinct character of the training text (nanoGPT's
shakespeare_char). Tiny vocabulary, no merges: the simplest way to watch a GPT learn spelling."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from gptlab.errors import UserError
from gptlab.tokenizers.base import Tokenizer, register


@register("char")
class CharTokenizer(Tokenizer):
    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        if not text:
            raise UserError("cannot fit a char tokenizer on empty text")
        return cls(text)

    @classmethod
    def from_data(cls, cfg: dict[str, Any], train_text: str | Iterable[str], full_text: Callable[[], str]) -> CharTokenizer:
        return cls.fit(full_text())

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            raise UserError(
                f"characters {unknown!r} are not in this char vocabulary of {self.vocab_size} "
                f"characters ({''.join(self.chars)!r})"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_spec(self) -> dict[str, Any]:
        return {"kind": "char", "chars": "".join(self.chars)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CharTokenizer:
        return cls(spec["chars"])
