"""Rows of different lengths decoded as one batch: `add` prefills a prompt alone and gives it a row,
`step` extends every live row by one token with one forward, `remove` frees a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


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
