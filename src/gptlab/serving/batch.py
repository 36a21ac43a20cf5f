"""Rows of different lengths decoded as one batch: `add` prefills a prompt alone and gives it a row,
`step` extends every live row by one token with one forward, `remove` frees a row.

`Batch` keeps one KV cache for all rows, each row at its own length: a step feeds row b's new token
at position pos[b], writes its key and value there, and row b attends to keys 0..pos[b] only (the
positions past it hold a longer row's history or nothing); the model does this when `pos` is a
tensor of per-row positions. Live rows stay packed in slots 0..n-1 (a removed row's slot takes the
last row), so a step computes exactly the live rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gptlab.model import KVCacheRows


@dataclass(eq=False)
class Row:
    slot: int  # live rows fill slots 0..n-1
    length: int  # tokens so far
    tokens: list[int] = field(default_factory=list)


class UncachedBatch:
    """No cache: every step re-reads each row's whole sequence, right-padded to the longest. Under a
    causal mask a position never sees the padding after it, so each row's logits are exactly the ones
    it would get alone."""

    def __init__(self, model, capacity: int):
        self.model, self.capacity = model, capacity
        self.device = next(model.parameters()).device
        self.rows: list[Row] = []

    def free_rows(self) -> int:
        return self.capacity - len(self.rows)

    @torch.inference_mode()
    def add(self, ids: list[int]) -> tuple[Row, torch.Tensor]:
        """A row for the prompt `ids`: the row and the logits (V,) of its first new token."""
        if not self.free_rows():
            raise RuntimeError(f"the batch is full ({self.capacity} rows)")
        row = Row(len(self.rows), len(ids), list(ids))
        self.rows.append(row)
        return row, self.model.forward_last(torch.tensor([ids], device=self.device))[0].float()

    @torch.inference_mode()
    def step(self, rows: list[Row], tokens: list[int]) -> torch.Tensor:
        """Feed tokens[i] to rows[i]; the logits (len(rows), V) of each row's next token, in that order."""
        for row, token in zip(rows, tokens):
            row.tokens.append(token)
            row.length += 1
        lengths = torch.tensor([row.length for row in rows], device=self.device)
        idx = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            idx[i, : row.length] = torch.tensor(row.tokens, device=self.device)
        logits, _ = self.model(idx)
        return logits[torch.arange(len(rows), device=self.device), lengths - 1].float()

    def remove(self, row: Row) -> None:
        self.rows.remove(row)
        for slot, r in enumerate(self.rows):
            r.slot = slot


class Batch:
    """Rows in one preallocated KV cache (model.new_kv_cache(capacity)), each at its own length."""

    def __init__(self, model, capacity: int):
        self.model, self.capacity = model, capacity
        self.device = next(model.parameters()).device
        self.cache = model.new_kv_cache(capacity)
        self.rows: list[Row] = []  # rows[i].slot == i

    def free_rows(self) -> int:
        return self.capacity - len(self.rows)

    @torch.inference_mode()
    def add(self, ids: list[int]) -> tuple[Row, torch.Tensor]:
        """A row for the prompt `ids`, prefilled alone into its slot: the row and the logits (V,) of
        its first new token (the very computation of a decode of this prompt alone)."""
        if not self.free_rows():
            raise RuntimeError(f"the batch is full ({self.capacity} rows)")
        row = Row(len(self.rows), len(ids))
        view = KVCacheRows(self.cache, row.slot, row.slot + 1)
        logits = self.model.forward_last(torch.tensor([ids], device=self.device), 0, view)[0]
        self.rows.append(row)
        return row, logits.float()

    @torch.inference_mode()
    def step(self, rows: list[Row], tokens: list[int]) -> torch.Tensor:
        """Feed tokens[i] to rows[i] (every live row, in any order); the logits (len(rows), V) of each
        row's next token, in that order."""
        if len(rows) != len(self.rows):
            raise ValueError(f"a step feeds every live row: got {len(rows)} of {len(self.rows)}")
        slots = torch.tensor([row.slot for row in rows], device=self.device)
        idx = torch.empty(len(rows), 1, dtype=torch.long, device=self.device)
        pos = torch.empty(len(rows), dtype=torch.long, device=self.device)
        idx[slots, 0] = torch.tensor(tokens, device=self.device)
        pos[slots] = torch.tensor([row.length for row in rows], device=self.device)
        view = KVCacheRows(self.cache, 0, len(rows), keys=max(row.length for row in rows) + 1)
        logits = self.model.forward_last(idx, pos, view)
        for row in rows:
            row.length += 1
        return logits[slots].float()

    def remove(self, row: Row) -> None:
        """Free a row: the last row moves into its slot (its filled positions only)."""
        last = self.rows.pop()
        if last is row:
            return
        for c in self.cache.layers:
            c.k[row.slot, :, : last.length] = c.k[last.slot, :, : last.length]
            c.v[row.slot, :, : last.length] = c.v[last.slot, :, : last.length]
        last.slot = row.slot
        self.rows[row.slot] = last
