"""The one test for "this micro-batch ends an accumulation window", shared by the module and callbacks."""

from __future__ import annotations

import lightning as L


def optimizer_stepped(trainer: L.Trainer, batch_idx: int) -> bool:
    """True on the micro-batch that ends an accumulation window, i.e. the one after which the
    optimizer has stepped (batch_idx counts micro-batches from 0 in Lightning's one endless epoch)."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0
