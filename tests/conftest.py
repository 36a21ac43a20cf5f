"""Shared test set-up: offline everything, and composing the real Hydra configs."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from gptlab.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def tiny_gpt(seed: int | None = None, **overrides: Any) -> GPT:
    """A GPT small enough for any test: 2 layers, 2 heads, width 32, block 16, vocabulary 50, no
    dropout; `overrides` set any other GPTConfig field. seed: torch.manual_seed(seed) before the
    weights are drawn (None: from the global RNG as it stands)."""
    if seed is not None:
        torch.manual_seed(seed)
    config = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, dropout=0.0)
    return GPT(GPTConfig(**{**config, **overrides}))


def read_metrics(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) rows of one metric in a run's CSV log (<run_dir>/logs/metrics.csv)."""
    with open(Path(run_dir) / "logs" / "metrics.csv") as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


def compose_train_cfg(run_dir: Path, data_dir: Path, overrides: list[str] | tuple[str, ...] = ()):
    """The config `python train.py <overrides>` would see, with run and data folders under tmp."""
    from gptlab.entrypoints.config import compose_train

    return compose_train(run_dir, data_dir, overrides)


def compose_generate_cfg(overrides: list[str] | tuple[str, ...] = ()):
    """The config `python generate.py <overrides>` would see."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("generate", overrides=list(overrides))


TINY_RUN = ("model=tiny", "trainer.accelerator=cpu", "trainer.enable_model_summary=false",
            "trainer.enable_progress_bar=false", "sample_after_training=0",
            "trainer.log_every_n_steps=1")  # the tests compare per-step losses


@pytest.fixture
def tiny_cfg(tmp_path):
    """A function building a tiny-model train config in tmp_path, with extra overrides."""
    def make(*overrides: str):
        return compose_train_cfg(tmp_path / "run", tmp_path / "data", [*TINY_RUN, *overrides])
    return make
