"""Lightning's loggers, less their noise."""

from __future__ import annotations

from typing import Any

import lightning.pytorch.loggers


class WandbLogger(lightning.pytorch.loggers.WandbLogger):
    """Lightning's WandbLogger without `anonymous=None` in its wandb.init arguments: wandb ≥ 0.19
    answers any value of that deprecated setting with "The anonymous setting has no effect and will
    be removed in a future version" at every run."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
