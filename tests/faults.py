"""Fault injection for tests/test_reliability.py. train.py subprocesses load these through Hydra
(`+callbacks.pause._target_=tests.faults.PauseAtStep`): train.py's folder is on sys.path."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import torch

from gptlab.callbacks.safety import AtomicCheckpointIO


class PauseAtStep(L.Callback):
    """At global step `step`, after backward and before the optimizer update, create `marker` and
    wait until `release` exists (or `timeout` s pass): the test kills or signals the process then."""

    def __init__(self, step: int, marker: str, release: str | None = None, timeout: float = 120.0):
        self.step, self.marker, self.release, self.timeout = step, marker, release, timeout

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).touch()
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline and not (self.release and Path(self.release).exists()):
                time.sleep(0.02)  # a signal's handler runs here, and the step then goes on


class SlowWriteCheckpointIO(AtomicCheckpointIO):
    """From global step `step` on, last.ckpt is written half, then `marker` is created and the
    writer stalls for `timeout` s before writing the rest: a test kills the process mid-write."""

    def __init__(self, step: int, marker: str, timeout: float = 120.0):
        self.step, self.marker, self.timeout = step, marker, timeout

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if Path(path).name != "last.ckpt" or checkpoint["global_step"] < self.step:
            return super().save_checkpoint(checkpoint, path, storage_options)
        real_save = torch.save

        def half_then_stall(obj: Any, f: Any) -> None:
            buf = io.BytesIO()
            real_save(obj, buf)
            data = buf.getvalue()
            with open(f, "wb") as out:
                out.write(data[: len(data) // 2])
                out.flush()
                Path(self.marker).touch()
                time.sleep(self.timeout)
                out.write(data[len(data) // 2 :])

        with mock.patch.object(torch, "save", half_then_stall):
            super().save_checkpoint(checkpoint, path, storage_options)
