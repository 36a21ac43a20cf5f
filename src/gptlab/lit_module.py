"""GPTLitModule: the LightningModule around GPT — loss, AdamW groups and the LR schedule.

Lightning does the rest (devices, DDP, precision, accumulation, clipping, checkpoints), so
this file only says *what* one training step is, never *how* it is run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy

from gptlab.callbacks.accumulation import optimizer_stepped
from gptlab.callbacks.safety import NonFiniteGuard
from gptlab.checkpoint import strip_wrapper_prefixes
from gptlab.errors import UserError
from gptlab.families import build_model
from gptlab.hf import from_pretrained
from gptlab.model import IGNORE_INDEX
from gptlab.optim import cosine
from gptlab.tasks import TASK_OBJECTIVES, check_task, task_loss

# nanoGPT's warmup + cosine, kept under its old name for callers that import it from here
get_lr = cosine


def build_optimizer(model: torch.nn.Module, optim: dict[str, Any], fused: bool | None = None) -> torch.optim.Optimizer:
    """optim.optimizer (a `_partial_` `_target_` taking the model) → the optimizer; AdamW when unset."""
    spec = optim.get("optimizer") or {"_target_": "gptlab.optim.adamw", "_partial_": True, "lr": optim["lr"],
                                       "betas": optim.get("betas", (0.9, 0.95)),
                                       "weight_decay": optim.get("weight_decay", 0.1)}
    return instantiate(spec, _convert_="all")(model, fused=fused)


def lr_schedule(optim: dict[str, Any]) -> Callable[[int], float]:
    """optim.schedule (a `_partial_` `_target_` taking the step) → step ↦ LR; warmup + cosine when unset."""
    spec = optim.get("schedule") or {"_target_": "gptlab.optim.cosine", "_partial_": True,
                                     **{k: optim[k] for k in ("lr", "min_lr", "warmup_steps", "lr_decay_steps")}}
    return instantiate(spec, _convert_="all")


def mask_tokens(x: torch.Tensor, mask_prob: float, mask_token_id: int, vocab_size: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masked-LM corruption: (inputs, targets) for a batch of token ids x.

    Each position is chosen with probability mask_prob; a chosen token becomes [MASK] 80% of the
    time, a random token 10%, and stays itself 10% (so the model cannot trust unmasked inputs
    blindly). Targets hold the original token at chosen positions and IGNORE_INDEX elsewhere.
    """
    u = torch.rand(x.shape, generator=generator, device=x.device)
    chosen = u < mask_prob
    r = torch.rand(x.shape, generator=generator, device=x.device)  # which of the three fates
    random_ids = torch.randint(0, vocab_size, x.shape, generator=generator, device=x.device)
    inputs = torch.where(chosen & (r < 0.8), torch.full_like(x, mask_token_id), x)
    inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_ids, inputs)
    return inputs, torch.where(chosen, x, torch.full_like(x, IGNORE_INDEX))


class GPTLitModule(L.LightningModule):
    """Args:
        model: GPTConfig fields (plus `compile`); vocab_size must be set.
        optim: lr, min_lr, warmup_steps, lr_decay_steps, weight_decay, betas.
        init_from: "scratch", or a Hugging Face GPT-2 folder/name to start from its weights.
        tokenizer: the tokenizer spec of the data, stored in checkpoints so generation can decode.
        objective: "clm" (next-token prediction, GPT) or "mlm" (BERT's masked tokens; pair it with
            model.causal=false or model.arch=encoder). mlm adds a [MASK] token to the vocabulary, id = the
            data's vocab_size. "classify" / "seq2seq": (input, target) task data (gptlab.tasks says how
            each model.arch reads it).
        mask_prob: mlm only: the fraction of positions masked and scored.
    """

    def __init__(self, model: dict[str, Any], optim: dict[str, Any], init_from: str = "scratch",
                 tokenizer: dict[str, Any] | None = None, objective: str = "clm", mask_prob: float = 0.15,
                 mask_token_id: int | None = None):
        super().__init__()
        model = dict(model)
        if objective not in ("clm", "mlm", *TASK_OBJECTIVES):
            raise UserError(f"objective={objective!r}: choose 'clm' (next token), 'mlm' (masked tokens), "
                            f"'classify' or 'seq2seq' (task data)")
        if model.get("arch", "decoder") == "encoder_decoder" and objective not in TASK_OBJECTIVES:
            raise UserError(f"model.arch=encoder_decoder with objective={objective}: it maps an input to a target; "
                            f"use objective=seq2seq or classify with task data")
        if objective == "mlm" and init_from not in (None, "scratch"):
            raise UserError(f"objective=mlm trains from scratch (it adds a [MASK] token); got init_from={init_from!r}")
        if objective == "mlm" and mask_token_id is None:  # a fresh run: one extra id for [MASK]
            mask_token_id = model["vocab_size"]
            model["vocab_size"] += 1
        self.objective, self.mask_prob, self.mask_token_id = objective, mask_prob, mask_token_id
        self.compile_model = bool(model.pop("compile", False))
        if init_from in (None, "scratch"):
            try:
                self.model = build_model(model)
            except ValueError as e:  # the model configs' own checks of model.* values (model.py imports torch only)
                raise UserError(f"model: {e}") from None
        else:
            overrides = {k: model[k] for k in ("dropout", "block_size", "vocab_multiple") if model.get(k) is not None}
            self.model = from_pretrained(init_from, **overrides)
            model = {**model, **self.model.config.to_dict()}
        self.tokenizer_spec = tokenizer
        # hparams hold the model's real config, so a checkpoint alone rebuilds the GPT
        self.save_hyperparameters({"model": self.model.config.to_dict() | {"compile": self.compile_model},
                                   "optim": dict(optim), "init_from": init_from, "objective": objective,
                                   "mask_prob": mask_prob, "mask_token_id": mask_token_id})
        self._micro_losses: list[torch.Tensor] = []
        self.task: dict[str, Any] | None = None  # the data's task spec (special ids, labels), for task objectives

    def setup(self, stage: str) -> None:
        # before any step: a task the model cannot express is an error naming the key, not a shape error
        if self.objective in TASK_OBJECTIVES:
            dm = self.trainer.datamodule if self._trainer is not None else None
            meta = dm.meta if dm is not None and hasattr(dm, "meta") else {}
            self.task = meta.get("task", self.task)
            check_task(self.model, self.objective, self.task, str(getattr(dm, "data_dir", "data")))

    def configure_model(self) -> None:
        if self.compile_model:
            self.model.compile()  # in place: state_dict keys stay free of "_orig_mod."

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self.model(idx, targets)

    def _mlm_batch(self, x: torch.Tensor, generator: torch.Generator | None = None):
        return mask_tokens(x, self.mask_prob, self.mask_token_id, self.mask_token_id, generator)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.objective in TASK_OBJECTIVES:
            loss, _ = task_loss(self.model, self.objective, batch, self.task)
        else:
            x, y = batch
            if self.objective == "mlm":
                x, y = self._mlm_batch(x)
            _, loss = self.model(x, y)
        # One train/loss row per optimizer step: the mean of its accumulation window's micro-batches.
        self._micro_losses.append(loss.detach())
        if optimizer_stepped(self.trainer, batch_idx):
            # self.log runs only on the steps whose row Lightning writes (every trainer.log_every_n_steps
            # optimizer steps, as its loggers do): a call on any other step is time spent for no row.
            # Rows: tests/test_training.py::test_train_loss_rows_follow_log_every_n_steps; the cost per
            # call: experiments/benchmarks/train_sections.py.
            if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
                mean = torch.stack(self._micro_losses).mean()
                self.log("train/loss", mean, on_step=True, on_epoch=False, prog_bar=True)
            self._micro_losses.clear()
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Gradients live only from a backward to the optimizer step that uses them: freed here, the next
        # forward's activations reuse their memory instead of being allocated beside them (a lower peak;
        # the per-step time is in experiments/benchmarks/train_sections.py, row "zero_grad").
        if optimizer_stepped(self.trainer, batch_idx):
            for optimizer in self.trainer.optimizers:
                optimizer.zero_grad(set_to_none=True)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        # Zero only what is there: on_train_batch_end frees the gradients after every optimizer step, so
        # this walks the parameters again only when something else left gradients behind
        # (experiments/benchmarks/train_sections.py, row "zero_grad").
        if any(p.grad is not None for group in optimizer.param_groups for p in group["params"]):
            optimizer.zero_grad(set_to_none=True)  # something else left gradients behind

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Lightning's clipping, except that clipping by norm reuses the norm NonFiniteGuard has just
        computed for this step (the same torch.nn.utils.clip_grad_norm_ arithmetic, one read of the
        gradients instead of two), and under FSDP goes through FSDP's own clip_grad_norm_ (the norm
        over every rank's shard), which Lightning's FSDP plugin leaves to the module."""
        norm = None
        if gradient_clip_val and (gradient_clip_algorithm or "norm") == "norm":
            if isinstance(self.trainer.strategy, FSDPStrategy):  # trainer=fsdp clips by norm 1.0
                self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)  # the root FSDP module
                return
            guard = next((cb for cb in self.trainer.callbacks if isinstance(cb, NonFiniteGuard)), None)
            norm = guard.checked_grad_norm(self.trainer, optimizer) if guard is not None else None
        if norm is None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.objective in TASK_OBJECTIVES:
            loss, acc = task_loss(self.model, self.objective, batch, self.task)
            self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
            self.log("val/acc", acc, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
            return loss
        x, y = batch
        if self.objective == "mlm":  # the same masks at every validation, so the numbers compare
            x, y = self._mlm_batch(x.cpu(), torch.Generator().manual_seed(batch_idx))
            x, y = x.to(self.device), y.to(self.device)
        logits, loss = self.model(x, y)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        if self.objective == "mlm":
            scored = y != IGNORE_INDEX
            acc = (logits.argmax(-1)[scored] == y[scored]).float().mean()
            self.log("val/masked_acc", acc, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def configure_optimizers(self):
        # Fused AdamW (CUDA; CPU since torch 2.4) wherever Lightning allows it: it is the fastest kernel
        # (experiments/benchmarks/README.md, train_throughput.py). Lightning's mixed-precision plugin refuses
        # to clip the gradients of a fused optimizer (it assumes the optimizer unscales them itself), so
        # mixed precision keeps the default kernel.
        mixed = self._trainer is not None and "mixed" in str(self._trainer.precision)
        fused = self.device.type in ("cuda", "cpu") and not mixed
        optimizer = build_optimizer(self.model, self.hparams.optim, fused=fused or None)
        # Every group's LR is its own peak LR × the schedule's factor at the step (one factor for all).
        factor = self._lr_factor()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1, "name": "lr"}}

    def _lr_factor(self) -> Callable[[int], float]:
        """step ↦ schedule(step) / optim.lr: the fraction of its peak LR each group runs at."""
        schedule, peak = lr_schedule(self.hparams.optim), self.hparams.optim["lr"]
        return lambda step: schedule(step) / peak

    # The tokenizer travels inside every checkpoint, and with it the torch RNG state so that a
    # resumed run draws the same dropout masks as an uninterrupted one.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokenizer"] = self.tokenizer_spec
        checkpoint["task"] = self.task
        checkpoint["rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # runs before Lightning loads the weights: a torch.compile'd or DDP-wrapped save resumes too
        checkpoint["state_dict"] = strip_wrapper_prefixes(checkpoint["state_dict"])
        self.tokenizer_spec = checkpoint.get("tokenizer", self.tokenizer_spec)
        self.task = checkpoint.get("task", self.task)
        self._rng_to_restore = checkpoint.get("rng")
        if self._trainer is not None and "loops" in checkpoint:  # trainer.fit resuming, not weights alone
            self._continue_with_this_config(checkpoint)

    def _continue_with_this_config(self, checkpoint: dict[str, Any]) -> None:
        """Resume with this run's optim.lr and accumulate_grad_batches where they differ from the
        checkpoint's (a no-op, bitwise, where they do not).

        Invariants after a resume: the LR of each parameter group at step s is this config's peak LR for
        that group × schedule(s) / optim.lr (LambdaLR scales the base LRs it saved, so those are set to
        this config's); and the micro-batches done count as global_step × this accumulate_grad_batches,
        because Lightning places accumulation windows and validations by micro-batches since the start —
        so the first window is whole, validations stay on multiples of eval_interval and each row keeps
        its step. Tested by tests/test_training.py::test_a_resume_takes_this_runs_lr_and_accumulation.
        """
        step = checkpoint["global_step"]
        peaks = [g["lr"] for g in build_optimizer(self.model, self.hparams.optim).param_groups]  # no state yet
        factor = self._lr_factor()(step)
        for scheduler in checkpoint.get("lr_schedulers", []):
            scheduler["base_lrs"] = list(peaks)
        for optimizer in checkpoint.get("optimizer_states", []):
            # MuonAdamW saves {"muon": state, "adamw": state}, groups in its param_groups' order
            saved = optimizer["param_groups"] if "param_groups" in optimizer else \
                [g for part in optimizer.values() for g in part["param_groups"]]
            for group, peak in zip(saved, peaks, strict=True):
                group["initial_lr"], group["lr"] = peak, peak * factor  # LambdaLR's arithmetic: bitwise
        progress = checkpoint["loops"].get("fit_loop", {}).get("epoch_loop.batch_progress")
        if progress and progress["current"] == progress["total"]:  # the one endless epoch
            shift = step * self.trainer.accumulate_grad_batches - progress["total"]["ready"]
            for counts in (progress["total"], progress["current"]):
                for key in counts:
                    counts[key] += shift

    def on_train_start(self) -> None:
        rng = getattr(self, "_rng_to_restore", None)
        if rng:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self._rng_to_restore = None
