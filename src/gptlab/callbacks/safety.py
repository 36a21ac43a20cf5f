"""What keeps a run's work safe: crash-safe checkpoint files, a NaN/inf guard, a checkpoint on Ctrl-C.

- AtomicCheckpointIO (a Trainer plugin, conf/trainer/default.yaml): every checkpoint Lightning
  writes (last, best, the interrupt save below) goes to a temporary file that is fsync'ed and
  renamed into place; loading is always torch.load(weights_only=True).
- NonFiniteGuard: a NaN/inf loss (or gradient) never reaches the weights. `stop` ends the run
  before the optimizer step, so the weights and the last good checkpoint stay as they were;
  `skip` drops that step's update and goes on (at most `max_skips` times). The gradient norm it
  checks is handed on to clipping (GPTLitModule), so the gradients are read once, not twice.
- SaveOnInterrupt: the first Ctrl-C (SIGINT) or SIGTERM lets the optimizer step in progress
  finish, writes last.ckpt, then stops as Lightning does on Ctrl-C; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from gptlab.callbacks.accumulation import optimizer_stepped
from gptlab.checkpoint import load_checkpoint, save_atomic
from gptlab.errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader/writer, made crash-safe (writes) and code-safe (reads)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        save_atomic(checkpoint, path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict:
        # weights_only is ignored on purpose: a resumed checkpoint never gets to run code
        return load_checkpoint(path, map_location=map_location)


class NonFiniteLossError(FloatingPointError):
    """Raised by NonFiniteGuard: the loss or the gradients of a step were NaN or infinite."""


class NonFiniteGuard(L.Callback):
    """Check every optimizer step's loss and gradients before the weights are updated.

    Args:
        mode: "stop" (raise NonFiniteLossError) or "skip" (drop the update, warn, go on).
        max_skips: in skip mode, stop once this many steps have been skipped in the run.
    """

    MODES = ("stop", "skip")

    def __init__(self, mode: str = "stop", max_skips: int = 10):
        if mode not in self.MODES:
            raise UserError(f"NonFiniteGuard mode={mode!r}; choose one of {list(self.MODES)}")
        if max_skips < 0:
            raise UserError(f"NonFiniteGuard max_skips={max_skips} must be >= 0")
        self.mode, self.max_skips = mode, max_skips
        self.skipped: list[int] = []  # global steps whose update was dropped
        self._losses: list[torch.Tensor] = []  # this step's micro-batch losses, read once at the step
        self._checked: tuple[torch.optim.Optimizer, int, torch.Tensor] | None = None  # (optimizer, step, norm)

    def checked_grad_norm(self, trainer: L.Trainer, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """The total 2-norm of `optimizer`'s gradients found finite at this step, or None.

        Gradient clipping by norm reuses it, so each step reads the gradients once, not twice
        (tests/test_reliability.py::test_clipping_reuses_the_guards_gradient_norm_and_matches_lightnings_own;
        cost in experiments/benchmarks/train_sections.py). Only where each rank holds whole gradients
        (one device or DDP): under FSDP and DeepSpeed a rank's norm covers its shard alone.
        """
        whole = isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)) and not isinstance(
            trainer.strategy, DeepSpeedStrategy)
        if whole and self._checked is not None and self._checked[:2] == (optimizer, trainer.global_step):
            return self._checked[2]
        return None

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        self._losses.append(loss.detach())  # kept on the device: no sync per micro-batch

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm, self._checked = None, None
        # fp16's GradScaler expects inf gradients now and then and skips those steps itself
        if grads and getattr(trainer.precision_plugin, "scaler", None) is None:
            # foreach: one kernel per (device, dtype) group, never one per tensor (train_sections.py, row 5)
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        # At most one device sync per optimizer step (the first float(); the rest are ready by then),
        # and no tensor ops of the guard's own after the backward pass (train_sections.py, row 5).
        losses, self._losses = [float(v) for v in self._losses], []
        bad = not all(map(math.isfinite, losses)) or (norm is not None and not math.isfinite(float(norm)))
        # under DDP every rank must take the same decision
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            if norm is not None:
                self._checked = (optimizer, trainer.global_step, norm)
            return
        step = trainer.global_step
        values = ", ".join(f"{v:g}" for v in losses) or "finite"
        what = f"non-finite loss or gradients at global step {step} (micro-batch losses: {values})"
        if self.mode == "skip" and len(self.skipped) < self.max_skips:
            optimizer.zero_grad(set_to_none=True)  # AdamW leaves parameters without a gradient untouched
            self.skipped.append(step)
            rank_zero_warn(
                f"{what}: skipped this update, the weights are unchanged "
                f"({len(self.skipped)} of at most {self.max_skips} skips)"
            )
            return
        if self.mode == "skip":
            reason = f"after {len(self.skipped)} skipped steps ({self.skipped}), the limit max_skips={self.max_skips}"
            option = f"raise callbacks.nonfinite_guard.max_skips (now {self.max_skips})"
        else:
            reason, option = "NonFiniteGuard mode=stop", "set callbacks.nonfinite_guard.mode=skip"
        raise NonFiniteLossError(
            f"{what}; stopped before the optimizer step ({reason}), so the weights and the checkpoints "
            f"hold the last good step. Lower optim.lr, check the data, or {option}"
        )

    # the skips are counted over the whole run, resumes included
    def state_dict(self) -> dict[str, Any]:
        return {"skipped": list(self.skipped)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = list(state_dict["skipped"])


class SaveOnInterrupt(L.Callback):
    """First Ctrl-C (SIGINT) or SIGTERM: finish the optimizer step in progress, write last.ckpt
    beside the other checkpoints, then stop the way Lightning stops on Ctrl-C (exit status 1).
    The checkpoint is taken between steps, so resuming from it continues exactly. The stop itself
    waits for the next hook after the step's metrics are logged (the next batch or a validation):
    Lightning logs a step after on_train_batch_end, so stopping there would lose that step's row."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None  # the signal received, if any
        self.saved = False  # last.ckpt is written: stop at the next hook
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.requested, self.saved = None, False
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            self._previous = {sig: signal.signal(sig, self._request) for sig in self.SIGNALS}

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = signum
        self._restore()  # a second signal gets the previous behaviour: stop now
        # os.write, not print: a handler may run in the middle of another print to the same stream
        os.write(
            sys.stderr.fileno(),
            f"\n[gptlab] {signal.Signals(signum).name}: finishing the current step, "
            f"then saving a checkpoint and stopping (Ctrl-C again to stop at once, without it)\n".encode(),
        )

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not optimizer_stepped(trainer, batch_idx):
            return  # mid-accumulation: the step is not complete yet
        if not trainer.strategy.reduce_boolean_decision(self.requested is not None, all=False):
            return
        path = self.last_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the full state: optimizer, loops, RNG
        rank_zero_info(
            f"[gptlab] saved {path} at step {trainer.global_step}; continue with ckpt_path={path} "
            f"(or resume=auto)"
        )
        self.saved = True

    def _stop_if_saved(self) -> None:
        if self.saved:
            raise KeyboardInterrupt  # Lightning's own Ctrl-C path: on_exception hooks, loggers finalised, exit(1)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._stop_if_saved()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_saved()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_saved()

    @staticmethod
    def last_path(trainer: L.Trainer) -> Path:
        cb = trainer.checkpoint_callback
        folder = (
            Path(cb.dirpath)
            if getattr(cb, "dirpath", None)
            else Path(trainer.default_root_dir) / "checkpoints"
        )
        name = getattr(cb, "CHECKPOINT_NAME_LAST", "last") + getattr(cb, "FILE_EXTENSION", ".ckpt")
        return folder / name

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
