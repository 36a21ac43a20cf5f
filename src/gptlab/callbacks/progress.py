"""Progress a user can read wherever the output goes: plain lines when stdout is not a terminal
(CI, SLURM, `> log.txt`), Lightning's rich bar, counted in optimizer steps, when it is."""

from __future__ import annotations

import logging
import sys
import time
from datetime import timedelta
from typing import Any

import lightning as L
import lightning.pytorch.callbacks
import lightning.pytorch.callbacks.model_summary
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table
from rich.progress import ProgressColumn
from rich.text import Text

from gptlab.errors import UserError

RUN_LOG = logging.getLogger("gptlab.run")


def emit(line: str) -> None:
    """A line for the user: printed to stdout, and logged (Hydra's job logging writes it to train.log)."""
    print(line, flush=True)
    RUN_LOG.info(line)


def is_terminal() -> bool:
    return sys.stdout.isatty()


def clock(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


class ProgressLog(L.Callback):
    """A line every `trainer.log_every_n_steps` optimizer steps (step, loss, tokens/s, elapsed, ETA)
    and one per validation (val loss, best so far), as nanoGPT's log_interval prints.

    `when`: "auto" prints only when stdout is not a terminal (there the rich bar shows the same),
    "always" and "never" force it. The loss is the last micro-batch's (the logged row averages the
    accumulation window's micro-batches; equal without accumulation). Printed by rank 0.
    """

    WHEN = ("auto", "always", "never")

    def __init__(self, when: str = "auto"):
        if when not in self.WHEN:
            raise UserError(f"ProgressLog when={when!r}; choose one of {list(self.WHEN)}")
        self.when = when
        self._start = self._last_t = 0.0
        self._first_step = self._last_step = 0

    @property
    def active(self) -> bool:
        return self.when == "always" or (self.when == "auto" and not is_terminal())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last_t = time.perf_counter()
        self._first_step = self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        every = max(int(trainer.log_every_n_steps), 1)
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if not (self.active and trainer.is_global_zero and stepped and step % every == 0 and step > self._last_step):
            return
        now = time.perf_counter()
        tokens = batch[0].numel() * trainer.accumulate_grad_batches * trainer.world_size * (step - self._last_step)
        rate = tokens / max(now - self._last_t, 1e-9)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        emit(self.line(trainer, step, float(loss), rate, now))
        self._last_t, self._last_step = now, step

    def line(self, trainer: L.Trainer, step: int, loss: float, tokens_per_s: float, now: float) -> str:
        elapsed = now - self._start
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        done = step - self._first_step
        eta = clock(elapsed / done * (total - step)) if total and done > 0 else "?"
        of = f"/{total}" if total else ""
        return (f"step {step}{of} | loss {loss:.4f} | {tokens_per_s:,.0f} tokens/s | "
                f"elapsed {clock(elapsed)} | ETA {eta}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.active and trainer.is_global_zero) or trainer.sanity_checking:
            return
        val = trainer.callback_metrics.get("val/loss")
        if val is None:
            return
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_score", None)
        best_text = f" (best {min(float(best), float(val)):.4f})" if best is not None else ""
        emit(f"step {trainer.global_step} | val loss {float(val):.4f}{best_text}")


class StepSpeedColumn(ProgressColumn):
    """Optimizer steps per second, blank until rich has two samples to measure (never a false 0.00)."""

    def render(self, task: Any) -> Text:
        return Text(f"{task.speed:.2f} steps/s" if task.speed else "", style="progress.data.speed")


class ModelSummary(lightning.pytorch.callbacks.ModelSummary):
    """Lightning's model summary without its FLOPs column and `Total FLOPs: 0` line: Lightning counts
    FLOPs only with a module's example_input_array (a forward at start-up), which gptlab does not set;
    the Throughput callback reports the model's real use of the hardware (perf/mfu)."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int, **kwargs: Any) -> None:
        if not total_flops:
            summary_data = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *summary_data)
        if not total_flops:
            table = "\n".join(line for line in table.splitlines() if not line.endswith("Total Flops"))
        logging.getLogger(lightning.pytorch.callbacks.model_summary.__name__).info("\n" + table)
