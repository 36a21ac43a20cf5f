"""Data: prepare text into memmapped token ids, and serve them to Lightning."""

from gptlab.data.datamodule import GPTDataModule
from gptlab.data.prepare import ensure_prepared, ensure_prepared_hf, prepare_hf, prepare_text, read_meta

__all__ = ["GPTDataModule", "ensure_prepared", "ensure_prepared_hf", "prepare_hf", "prepare_text", "read_meta"]
