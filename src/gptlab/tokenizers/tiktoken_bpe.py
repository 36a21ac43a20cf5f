"""OpenAI's tiktoken encodings (GPT-2's by default), usable offline.

tiktoken downloads `vocab.bpe` and `encoder.json` on first use; gptlab ships GPT-2's two files
(src/gptlab/assets/tiktoken, named by the sha1 of their URL as tiktoken expects) and points
TIKTOKEN_CACHE_DIR at them unless the user set it, so GPT-2 works with no network. Any other
encoding still downloads as usual when the user has internet.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from gptlab.errors import UserError
from gptlab.paths import asset
from gptlab.tokenizers.base import Tokenizer, register

SHIPPED_CACHE = asset("tiktoken")


def use_shipped_tiktoken_cache() -> None:
    """Point tiktoken at the shipped GPT-2 files unless the user chose a cache folder."""
    if "TIKTOKEN_CACHE_DIR" not in os.environ and "DATA_GYM_CACHE_DIR" not in os.environ:
        os.environ["TIKTOKEN_CACHE_DIR"] = str(SHIPPED_CACHE)


@register("tiktoken")
class TiktokenTokenizer(Tokenizer):
    def __init__(self, encoding: str = "gpt2"):
        import tiktoken

        use_shipped_tiktoken_cache()
        try:
            self.enc = tiktoken.get_encoding(encoding)
        except ValueError as e:  # unknown name
            raise UserError(f"unknown tiktoken encoding {encoding!r}: {e}") from None
        self.encoding = encoding

    @classmethod
    def from_data(cls, cfg: dict[str, Any], train_text: str | Iterable[str], full_text: Callable[[], str]) -> TiktokenTokenizer:
        return cls(cfg.get("encoding", "gpt2"))

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    @property
    def eot_token_id(self) -> int | None:
        return self.enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_ordinary(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode([int(i) for i in ids])

    def to_spec(self) -> dict[str, Any]:
        return {"kind": "tiktoken", "encoding": self.encoding}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TiktokenTokenizer:
        return cls(spec.get("encoding", "gpt2"))
