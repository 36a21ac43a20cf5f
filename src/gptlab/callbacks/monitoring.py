"""What a run is doing: training throughput (tokens/s, MFU) and text samples while it trains."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import lightning.pytorch.callbacks
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

from gptlab.callbacks.accumulation import optimizer_stepped
from gptlab.callbacks.progress import StepSpeedColumn, is_terminal
from gptlab.errors import UserError
from gptlab.flops import device_peak_flops, estimate_mfu

# strategies whose forward gathers weight shards from every rank
SHARDED_STRATEGIES = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)


class Throughput(L.Callback):
    """Logs `perf/tokens_per_s` (all devices), `perf/steps_per_s` and `perf/mfu` over windows of
    `window` optimizer steps.

    Windows, not single steps, because a per-step time on a GPU needs a device sync per step
    (it would slow the run it measures); the first window starts after `skip` steps so that
    torch.compile and allocator warm-up do not count. MFU is per device against the GPU's peak
    for the run's precision (gptlab.flops), or `peak_flops` when given (e.g. for a CPU).
    """

    def __init__(self, window: int = 50, skip: int = 5, peak_flops: float | None = None):
        if window < 1 or skip < 0:
            raise UserError(f"Throughput: window must be ≥ 1 and skip ≥ 0, got window={window}, skip={skip}")
        self.window, self.skip, self.peak_flops = window, skip, peak_flops
        self._t0: float | None = None
        self._tokens = 0
        self._steps = 0

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._t0 is not None:
            self._tokens += batch[0].numel()
        if not optimizer_stepped(trainer, batch_idx):
            return
        if self._t0 is None:
            if trainer.global_step >= self.skip:
                self._sync(pl_module)
                self._t0, self._tokens, self._steps = time.perf_counter(), 0, 0
            return
        self._steps += 1
        if self._steps < self.window:
            return
        self._sync(pl_module)
        elapsed = time.perf_counter() - self._t0
        tokens_per_s = self._tokens / elapsed  # this device
        model = pl_module.model
        peak = self.peak_flops or device_peak_flops(precision=str(trainer.precision))
        mfu = estimate_mfu(model.config, model.num_params(non_embedding=True), tokens_per_s, peak)
        figures = {"perf/tokens_per_s": tokens_per_s * trainer.world_size, "perf/steps_per_s": self._steps / elapsed,
                   "perf/mfu": mfu}
        if trainer.is_global_zero:  # straight to the loggers: self.log would repeat the value every step
            for logger in trainer.loggers:
                logger.log_metrics(figures, step=trainer.global_step - 1)  # the row of the step just taken
        self._t0, self._tokens, self._steps = time.perf_counter(), 0, 0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = None  # validation time is not training throughput: restart the window after it


class TextSampler(L.Callback):
    """Every `every_n_steps` optimizer steps, generate `max_new_tokens` from `prompt` and log it.

    The text goes to `<run log dir>/samples.txt` (always) and to TensorBoard / wandb when those
    loggers are in use. Sampling draws from its own seeded generator, never the global RNG, so it
    leaves the training run (dropout masks, exact resume) untouched.
    """

    def __init__(self, every_n_steps: int = 500, max_new_tokens: int = 200, prompt: str = "\n",
                 temperature: float = 0.8, top_k: int | None = 200, top_p: float | None = None, seed: int = 1337):
        if every_n_steps < 1 or max_new_tokens < 1:
            raise UserError(f"TextSampler: every_n_steps and max_new_tokens must be ≥ 1, "
                             f"got {every_n_steps}, {max_new_tokens}")
        self.every_n_steps, self.max_new_tokens, self.prompt = every_n_steps, max_new_tokens, prompt
        from gptlab.generation import Decoding

        # built here, so a bad value fails when the callback is made, not at the first sample
        self.decoding = Decoding(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                 seed=seed)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if optimizer_stepped(trainer, batch_idx) and step % self.every_n_steps == 0:
            self.sample(trainer, pl_module, step)

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> str | None:
        """Rank 0 samples and writes. Where the strategy shards the weights (FSDP, DeepSpeed, model
        parallel) every forward is collective, so every rank decodes the same seeded sample in step
        (rank 0 alone would wait forever for the others' shards) and rank 0 writes it."""
        from gptlab.generation import generate_text
        from gptlab.tokenizers import tokenizer_from_spec

        if not (trainer.is_global_zero or isinstance(trainer.strategy, SHARDED_STRATEGIES)):
            return None
        if pl_module.tokenizer_spec is None:
            raise ValueError("TextSampler needs the data's tokenizer: GPTLitModule(tokenizer=...) was None")
        tok = tokenizer_from_spec(pl_module.tokenizer_spec)
        text = generate_text(pl_module.model, tok, self.prompt, self.decoding)
        if trainer.is_global_zero:
            self._write(trainer, step, text)
        return text

    def _write(self, trainer: L.Trainer, step: int, text: str) -> None:
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "samples.txt", "a", encoding="utf-8") as f:
            f.write(f"=== step {step}\n{self.prompt}{text}\n")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("samples", f"```\n{self.prompt}{text}\n```", global_step=step)
            elif isinstance(logger, WandbLogger):
                logger.log_text("samples", columns=["step", "text"], data=[[step, self.prompt + text]], step=step)


class RichProgressBar(lightning.pytorch.callbacks.RichProgressBar):
    """Lightning's rich progress bar, counted in optimizer steps (global_step of max_steps, also across
    a resume and under gradient accumulation), described as "Train" rather than an epoch of an endless
    stream (Lightning's `Epoch 0/-2`), and updated every `update_every` training batches (and at the
    last). When stdout is not a terminal the bar turns itself off: gptlab.callbacks.progress.ProgressLog
    prints plain lines there instead.

    The bar's line redraws about once a second, so reading every logged metric and updating the rich
    task on each batch (Lightning's default) only spends step time: the cost is measured in
    experiments/benchmarks/README.md (train_sections.py), the cadence by
    tests/test_training.py::test_progress_bar_updates_every_n_batches_and_at_the_end.
    """

    def __init__(self, update_every: int = 10, **kwargs: Any):
        if update_every < 1:
            raise UserError(f"RichProgressBar: update_every must be ≥ 1, got {update_every}")
        super().__init__(**kwargs)
        self.update_every = update_every
        if not is_terminal():
            self.disable()

    @property
    def total_train_batches(self) -> int | float:
        t = self.trainer
        return t.max_steps if t.max_steps is not None and t.max_steps > 0 else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is None or self.trainer.max_epochs < 0:
            return f"{'Train':{len(self.validation_description)}}"
        return super()._get_train_description(current_epoch)

    def configure_columns(self, trainer: L.Trainer) -> list:
        return [*super().configure_columns(trainer)[:-1], StepSpeedColumn()]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._update(self.train_progress_bar_id, trainer.global_step)  # a resumed run starts part-way

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        last = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        if (batch_idx + 1) % self.update_every == 0 or last:
            if not self.is_disabled and self.train_progress_bar_id is None:
                self._initialize_train_progress_bar_id()
            self._update(self.train_progress_bar_id, trainer.global_step)
            self._update_metrics(trainer, pl_module)
            self.refresh()
