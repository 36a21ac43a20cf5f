"""Hydra's hook before a run: gptlab.preflight's checks before Hydra makes the run folder."""

from __future__ import annotations

import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gptlab.errors import UserError, full_errors, report
from gptlab.preflight import run_checks


class Preflight(Callback):
    """on_run_start comes before Hydra creates the run folder, so a missing ckpt_path or a run that
    cannot fit leaves no empty folder behind. DDP's child processes (LOCAL_RANK > 0) skip it: their
    launcher already checked. Sweeps are checked per job, in train()."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if int(os.environ.get("LOCAL_RANK", 0)) != 0:
            return
        try:
            run_checks(config)
        except UserError as e:
            if full_errors():
                raise
            report(e)
