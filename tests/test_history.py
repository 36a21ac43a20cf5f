"""A resumed run keeps every earlier metrics row (CSV and TensorBoard), each step exactly once, and
a run's console says what it is doing when stdout is not a terminal."""

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


def test_a_log_that_is_not_a_terminal_gets_progress_lines_and_train_log(tmp_path):
    """`python train.py > log.txt`: a line every log_every_n_steps optimizer steps and one per
    validation, no rich bar frames, no `Total FLOPs: 0`; the same lines in the run's train.log."""
    import re
    import subprocess
    import sys

    from tests.conftest import ROOT

    with open(tmp_path / "log.txt", "w") as log:
        subprocess.run([sys.executable, str(ROOT / "train.py"), "model=tiny", "trainer.max_steps=6", "eval_interval=4",
                        "trainer.log_every_n_steps=2", "data.val_batches=1", "sample_after_training=0",
                        f"hydra.run.dir={tmp_path}/run", f"paths.data_dir={tmp_path}/data"],
                       stdout=log, stderr=subprocess.STDOUT, check=True, timeout=300, cwd=tmp_path)
    out = (tmp_path / "log.txt").read_text()
    steps = re.findall(r"^step (\d+)/6 \| loss \d+\.\d{4} \| [\d,]+ tokens/s \| elapsed \d:\d\d:\d\d \| ETA \d:\d\d:\d\d$",
                       out, re.MULTILINE)
    assert steps == ["2", "4", "6"], out
    assert re.search(r"^step 4 \| val loss \d\.\d{4}$", out, re.MULTILINE), out
    assert "\r" not in out and "Epoch" not in out and "FLOPs" not in out and "val loss None" not in out, out
    train_log = (tmp_path / "run" / "train.log").read_text()
    assert "step 6/6 | loss" in train_log and "[gptlab] done: 6 steps" in train_log


def test_the_bar_counts_optimizer_steps_across_a_resume():
    from types import SimpleNamespace

    from gptlab.callbacks.monitoring import RichProgressBar

    bar = RichProgressBar()
    bar._trainer = SimpleNamespace(max_steps=690, global_step=400, max_epochs=-1, num_training_batches=float("inf"))
    assert bar.total_train_batches == 690  # not Lightning's remaining 290 against a count from 400
    assert bar._get_train_description(0).strip() == "Train"  # not `Epoch 0/-2`
