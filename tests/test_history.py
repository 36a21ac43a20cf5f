"""A resumed run keeps every earlier metrics row (CSV and TensorBoard), each step exactly once."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from gptlab.analysis.curves import read_tensorboard_metrics
from gptlab.entrypoints.train import train
from tests.conftest import TINY_RUN, compose_train_cfg

RUN = (*TINY_RUN, "eval_interval=4", "data.val_batches=1", "logger=[csv,tensorboard]")


def run(tmp: Path, folder: str, *overrides: str) -> dict:
    return train(compose_train_cfg(tmp / folder, tmp / "data", [*RUN, *overrides]))


def rows(run_dir: Path) -> Counter:
    """(step, metric) → how many times metrics.csv holds it (Lightning puts `epoch` on every row)."""
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return Counter((int(r["step"]), k) for r in csv.DictReader(f) for k, v in r.items()
                       if v and k not in ("step", "epoch"))


def values(run_dir: Path, key: str) -> dict[int, float]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same 8 steps without an interruption."""
    tmp = tmp_path_factory.mktemp("reference")
    run(tmp, "run", "trainer.max_steps=8")
    return tmp / "run"


@pytest.mark.parametrize("where", ["same folder", "new folder"])
def test_resume_keeps_every_step_once(tmp_path, reference, where):
    """Stopped after step 6, resumed from the step-4 checkpoint (as after a hard kill): steps 4-5 are
    logged again. metrics.csv then holds every (step, metric) of the uninterrupted run exactly once,
    with its values; the superseded rows are set aside, not deleted; TensorBoard agrees."""
    run(tmp_path, "run", "trainer.max_steps=6")
    first = tmp_path / "run"
    (ckpt,) = (first / "checkpoints").glob("best-step4-*.ckpt")
    resumed = first if where == "same folder" else tmp_path / "resumed"
    run(tmp_path, resumed.name, "trainer.max_steps=8", f"ckpt_path={ckpt}")

    got, want = rows(resumed), rows(reference)
    assert got == want and set(got.values()) == {1}
    assert values(resumed, "train/loss") == pytest.approx(values(reference, "train/loss"))
    if where == "same folder":
        (aside,) = (first / "logs").glob("metrics.csv.*")  # the first launch's rows, 0-5, kept
        with open(aside, newline="") as f:
            assert max(int(r["step"]) for r in csv.DictReader(f)) == 5
    tb = read_tensorboard_metrics(resumed / "tensorboard")
    ref = read_tensorboard_metrics(reference / "tensorboard")
    assert list(tb["train/loss"].steps) == list(ref["train/loss"].steps)
    assert tb["train/loss"].values == pytest.approx(ref["train/loss"].values)


def test_a_fresh_run_in_a_used_folder_sets_the_old_metrics_aside(tmp_path):
    run(tmp_path, "run", "trainer.max_steps=4")
    run(tmp_path, "run", "trainer.max_steps=2")
    assert max(s for s, _ in rows(tmp_path / "run")) < 4  # only the second run's rows
    assert len(list((tmp_path / "run" / "logs").glob("metrics.csv.*"))) == 1
