"""Training mechanics through Lightning's real Trainer and the real Hydra configs: gradient
accumulation, exact resume, DDP, precision, loggers, callbacks, sweeps and debug configs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from gptlab.data.datamodule import RandomWindows
from gptlab.entrypoints.train import train
from gptlab.lit_module import GPTLitModule
from tests.conftest import ROOT, compose_train_cfg

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, dropout=0.0, bias=True)
OPTIM = dict(lr=1e-3, min_lr=1e-4, warmup_steps=0, lr_decay_steps=10, weight_decay=0.1, betas=[0.9, 0.95])


def metrics(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) rows of one metric in a run's CSV log."""
    with open(run_dir / "logs" / "metrics.csv") as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


# ---- accumulation -------------------------------------------------------------------------------

class GradsBeforeStep(L.Callback):
    """Keeps the gradients Lightning hands to the optimizer (before clipping)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters()}


def one_step_grads(chunks: list[tuple[torch.Tensor, torch.Tensor]], accumulate: int, tmp_path: Path):
    torch.manual_seed(0)
    module = GPTLitModule(model=TINY, optim=OPTIM)
    grads = GradsBeforeStep()
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="logs", version="")
    trainer = L.Trainer(accelerator="cpu", max_steps=1, accumulate_grad_batches=accumulate, logger=logger,
                        callbacks=[grads], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, log_every_n_steps=1)
    trainer.fit(module, train_dataloaders=DataLoader(chunks, batch_size=None))
    return grads.grads, metrics(tmp_path, "train/loss")


def test_accumulation_k_micro_batches_equals_one_big_batch(tmp_path):
    """k micro-batches of b (Lightning divides each loss by k) give batch k·b's gradients, and the
    logged train loss is the mean over the micro-batches = the big batch's loss."""
    k, b = 4, 3
    ids = torch.randint(0, TINY["vocab_size"], (5000,)).numpy()
    x, y = RandomWindows(ids, TINY["block_size"], k * b, seed=1).batch(0)
    big, big_loss = one_step_grads([(x, y)], 1, tmp_path / "big")
    small, small_loss = one_step_grads([(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b]) for i in range(k)], k,
                                       tmp_path / "small")
    assert big.keys() == small.keys()
    for name in big:
        torch.testing.assert_close(small[name], big[name], atol=1e-5, rtol=1e-4, msg=name)
    assert len(big_loss) == len(small_loss) == 1  # one logged loss per optimizer step
    assert small_loss[0][1] == pytest.approx(big_loss[0][1], abs=1e-5)


# ---- exact resume -------------------------------------------------------------------------------

RESUME_RUN = ("model=tiny", "model.dropout=0.1", "trainer.accelerator=cpu", "trainer.enable_model_summary=false",
              "trainer.enable_progress_bar=false", "sample_after_training=0", "eval_interval=4",
              "data.val_batches=2", "optim.warmup_steps=2", "optim.lr_decay_steps=8", "optim.lr=3e-3",
              "callbacks.sampler.every_n_steps=3", "callbacks.sampler.max_new_tokens=8")


def test_resume_gives_the_same_losses_and_weights_as_an_uninterrupted_run(tmp_path):
    """8 steps straight vs 4 steps + resume to 8 from last.ckpt: same per-step losses (bitwise on
    CPU fp32), same final weights, same best val loss. Dropout is on, so the restored RNG matters;
    the sampler callback runs in between and must not disturb it."""
    data = tmp_path / "data"
    straight = train(compose_train_cfg(tmp_path / "straight", data, [*RESUME_RUN, "trainer.max_steps=8"]))
    half = train(compose_train_cfg(tmp_path / "half", data, [*RESUME_RUN, "trainer.max_steps=4"]))
    resumed = train(compose_train_cfg(tmp_path / "resumed", data, [*RESUME_RUN, "trainer.max_steps=8",
                                                                    f"ckpt_path={half['last_ckpt']}"]))
    assert straight["steps"] == resumed["steps"] == 8
    losses_straight = metrics(tmp_path / "straight", "train/loss")
    losses_split = metrics(tmp_path / "half", "train/loss") + metrics(tmp_path / "resumed", "train/loss")
    assert [s for s, _ in losses_straight] == list(range(8))
    assert losses_split == losses_straight  # bitwise
    assert metrics(tmp_path / "resumed", "val/loss") == metrics(tmp_path / "straight", "val/loss")[1:]
    assert resumed["best_val_loss"] == straight["best_val_loss"]

    # the best val loss survives a resume into a new run folder, even before the next validation
    no_val_yet = train(compose_train_cfg(tmp_path / "resumed6", data, [*RESUME_RUN, "trainer.max_steps=6",
                                                                       f"ckpt_path={half['last_ckpt']}"]))
    assert no_val_yet["best_val_loss"] == half["best_val_loss"] is not None
    assert Path(no_val_yet["best_ckpt"]).exists() and Path(half["best_ckpt"]).exists()

    a = torch.load(straight["last_ckpt"], weights_only=True)
    b = torch.load(resumed["last_ckpt"], weights_only=True)
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == 8
