"""Tokenizers behind one interface: char, tiktoken (GPT-2), and our own byte-level BPE."""

from gptlab.tokenizers.base import (
    Tokenizer,
    load_tokenizer,
    register,
    tokenizer_for_data,
    tokenizer_from_spec,
)
from gptlab.tokenizers.bpe import BPETokenizer
from gptlab.tokenizers.char import CharTokenizer
from gptlab.tokenizers.tiktoken_bpe import TiktokenTokenizer

__all__ = [
    "Tokenizer",
    "BPETokenizer",
    "CharTokenizer",
    "TiktokenTokenizer",
    "load_tokenizer",
    "register",
    "tokenizer_for_data",
    "tokenizer_from_spec",
]
