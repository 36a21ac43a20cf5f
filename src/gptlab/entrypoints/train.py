"""`gptlab-train` / `python train.py ...`: the checks that need no Lightning, then gptlab.training.

The preflight (checkpoint to resume exists, GPUs are there, the memory fits) runs before Lightning
is imported, so a refused run answers in seconds rather than after Lightning's import (about ten
seconds on a busy CPU); the training code is imported only for a run that goes ahead."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig

from gptlab.entrypoints.config import hydra_entry
from gptlab.preflight import run_checks


def train(cfg: DictConfig) -> dict[str, Any]:
    """gptlab.training.train (imported on use: see the module docstring)."""
    from gptlab.training import train as run

    return run(cfg)


@hydra_entry("train")
def main(cfg: DictConfig) -> float | None:
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:  # DDP's other ranks: their launcher checked
        run_checks(cfg)
    from gptlab.training import train as run

    return run(cfg, preflight_done=True)["best_val_loss"]  # returned for Hydra sweepers (e.g. Optuna)
