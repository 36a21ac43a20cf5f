"""A callback speedrun.py adds to gptlab's train.py: one stdout line per validation, so the parent
process timestamps it on arrival exactly as it timestamps nanoGPT's own `step N: ... val loss V` lines."""

from __future__ import annotations

import lightning as L


class ValLine(L.Callback):
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None and not trainer.sanity_checking:
            print(f"[speedrun] step {trainer.global_step} val {float(loss):.4f}", flush=True)
