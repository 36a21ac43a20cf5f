"""The one small interface every tokenizer implements, and a registry to build/load them by name.

A tokenizer is described by a JSON-able spec (`to_spec()`): it is saved beside the prepared bins
and inside every checkpoint, so `generate.py` can decode with exactly the tokenizer a run used.
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gptlab.errors import MissingFile, UserError


class Tokenizer(ABC):
    """encode/decode between text and token ids, with a fixed vocabulary size."""

    kind: str  # the registry name: "char", "tiktoken", "bpe", ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode treating special-token strings as plain text: what data preparation wants,
        since a corpus that happens to contain "<|endoftext|>" must not inject control tokens."""
        return self.encode(text)

    def fast_encoder(self) -> Callable[[str], list[int]]:
        """The fastest function giving exactly `encode_ordinary`'s ids (for bulk data prep)."""
        return self.encode_ordinary

    @abstractmethod
    def to_spec(self) -> dict[str, Any]:
        """A JSON-able dict with "kind" from which `from_spec` rebuilds an identical tokenizer."""

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: dict[str, Any]) -> Tokenizer: ...

    @classmethod
    def from_data(cls, cfg: dict[str, Any], train_text: str | Iterable[str], full_text: Callable[[], str]) -> Tokenizer:
        """The tokenizer a data config (`data.tokenizer`) asks for, fitted where it learns from text.
        Kinds that data preparation can build override this; the others (e.g. "ehr") are built elsewhere."""
        raise NotImplementedError(f"tokenizer kind {cls.kind!r} is not built from a data config")

    @classmethod
    def builds_from_data(cls) -> bool:
        return cls.from_data.__func__ is not Tokenizer.from_data.__func__

    @property
    def eot_token_id(self) -> int | None:
        """Id of the end-of-text token, if the vocabulary has one."""
        return None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_spec(), ensure_ascii=False, indent=1), encoding="utf-8")


_REGISTRY: dict[str, type[Tokenizer]] = {}
# kinds whose module registers itself on import; imported only when a spec names them
_LAZY = {"ehr": "gptlab.ehr.tokenizer"}


def register(kind: str) -> Callable[[type[Tokenizer]], type[Tokenizer]]:
    def wrap(cls: type[Tokenizer]) -> type[Tokenizer]:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return wrap


def tokenizer_from_spec(spec: dict[str, Any]) -> Tokenizer:
    kind = spec.get("kind")
    if kind not in _REGISTRY and kind in _LAZY:
        importlib.import_module(_LAZY[kind])
    if kind not in _REGISTRY:
        raise UserError(f"unknown tokenizer kind {kind!r}; known: {sorted({*_REGISTRY, *_LAZY})}")
    return _REGISTRY[kind].from_spec(spec)


def tokenizer_for_data(cfg: dict[str, Any], train_text: str | Iterable[str], full_text: Callable[[], str]) -> Tokenizer:
    """Build the tokenizer `data.tokenizer` names through the registry. Learnt vocabularies (BPE merges)
    see the training split only (`train_text`); the char set is taken from the whole text
    (`full_text()`, read only by kinds that need it), as nanoGPT does, so validation never meets an
    unknown character — the alphabet says nothing about the held-out content."""
    kind = cfg.get("kind")
    kinds = [k for k, c in _REGISTRY.items() if c.builds_from_data()]
    if kind not in kinds:
        raise UserError(f"data.tokenizer.kind={kind!r} is not one of: {', '.join(kinds)}")
    return _REGISTRY[kind].from_data(cfg, train_text, full_text)


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))  # as saved, whatever the locale's encoding
    except FileNotFoundError:
        raise MissingFile(f"tokenizer file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"tokenizer file {path} is not valid JSON: {e}") from None
    return tokenizer_from_spec(spec)
