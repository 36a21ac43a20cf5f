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


# --- analyze.py on short runs ---------------------------------------------------------------------

def _falling_run(every: int):
    """Train loss 4/(1 + step/50) logged every `every` steps for 200 steps, val every 50."""
    import numpy as np

    from gptlab.analysis.curves import TRAIN, VAL, RunLog, Series

    steps = np.arange(every - 1, 200, every)
    val_steps = np.arange(49, 200, 50)
    f = lambda s: 4 / (1 + (s + 1) / 50)  # noqa: E731
    metrics = {TRAIN: Series(steps, f(steps)), VAL: Series(val_steps, f(val_steps) + 0.05)}
    return RunLog(Path("run"), "run", metrics, tokens_per_step=768)


def test_summary_counts_steps_not_rows():
    import numpy as np

    from gptlab.analysis.curves import summary_rows

    for every in (1, 10):
        row = summary_rows([_falling_run(every)], last_steps=20)[0]
        done = np.arange(every, 201, every)
        want = (4 / (1 + done[done > 180] / 50)).mean()
        assert float(row["train loss (last 20 steps)"]) == pytest.approx(want, abs=1e-4)


def test_the_moving_average_does_not_sit_above_the_loss_it_smooths():
    """On a falling loss the average lags (stays above the raw points) by a small amount, of the same
    order whatever the logging interval; it never starts above the first points. (Averaging rows with
    0.9 per row and starting from the first row, the line sat 0.66 above the last loss here.)"""
    from gptlab.analysis.curves import TRAIN, ema

    lag = {}
    for every in (1, 10):
        s = _falling_run(every).metrics[TRAIN]
        smooth = ema(s, 0.9)
        assert smooth[0] == pytest.approx(s.values[0])
        lag[every] = smooth[-1] - s.values[-1]
    assert 0 < lag[10] < 0.05 and 0 < lag[1] < 0.05


def test_report_states_the_real_logging_interval():
    from gptlab.analysis.report import _every

    assert _every(_falling_run(10)) == "every 10 optimizer steps (trainer.log_every_n_steps)"
    assert _every(_falling_run(1)) == "every optimizer step"
