"""Rows of different lengths decoded as one batch: `add` prefills a prompt alone and gives it a row,
`step` extends many rows by one token each with one forward, `remove` frees a row.

Without a cache every step re-reads each row's whole sequence, right-padded to the longest: under a
causal mask a position never sees the padding after it, so each row's logits are exactly the ones it
would get alone.
"""

from __future__ import annotations

import torch


class Batch:
    def __init__(self, model, capacity: int):
        self.model, self.capacity = model, capacity
        self.device = next(model.parameters()).device
        self.seqs: dict[int, list[int]] = {}
        self.free = list(range(capacity))

    @torch.inference_mode()
    def add(self, ids: list[int]) -> tuple[int, torch.Tensor]:
        """A row for the prompt `ids`: its slot and the logits (V,) of its first new token."""
        if not self.free:
            raise RuntimeError(f"the batch is full ({self.capacity} rows)")
        slot = self.free.pop(0)
        self.seqs[slot] = list(ids)
        logits = self.model.forward_last(torch.tensor([ids], device=self.device))[0]
        return slot, logits.float()

    @torch.inference_mode()
    def step(self, slots: list[int], tokens: list[int]) -> torch.Tensor:
        """Append tokens[i] to row slots[i]; the logits (len(slots), V) of each row's next token."""
        for slot, token in zip(slots, tokens):
            self.seqs[slot].append(token)
        lengths = torch.tensor([len(self.seqs[s]) for s in slots], device=self.device)
        idx = torch.zeros(len(slots), int(lengths.max()), dtype=torch.long, device=self.device)
        for i, slot in enumerate(slots):
            idx[i, : lengths[i]] = torch.tensor(self.seqs[slot], device=self.device)
        logits, _ = self.model(idx)
        return logits[torch.arange(len(slots), device=self.device), lengths - 1].float()

    def remove(self, slot: int) -> None:
        del self.seqs[slot]
        self.free.append(slot)
