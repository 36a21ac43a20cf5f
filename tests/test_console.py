"""What a run says: progress lines when stdout is not a terminal, a bar in optimizer steps, train.log,
analyze.py's figures on short runs, one summary line for MEDS data problems."""

from __future__ import annotations

from pathlib import Path

import pytest


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


def test_meds_problems_are_one_line_without_the_static_rows(capsys, tmp_path):
    from gptlab.ehr.meds import Problems
    from gptlab.ehr.prepare import say_problems

    problems = Problems()
    problems.add("null_time_rows_as_static_prefix", 300, "subject 1: GENDER//F")  # MEDS's convention
    problems.add("unparsed_numeric_value", 12, "LAB//x: 'n/a'")
    problems.add("events_before_birth", 3, "subject 7")
    say_problems(problems, tmp_path / "meta.json")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "static" not in out
    assert "2 kinds of rows handled by a rule (events_before_birth 3, unparsed_numeric_value 12)" in out
    problems = Problems()
    problems.add("null_time_rows_as_static_prefix", 300)
    say_problems(problems, tmp_path / "meta.json")
    assert capsys.readouterr().out == ""


def test_wandb_gets_no_anonymous_setting(tmp_path, capsys):
    from gptlab.callbacks.loggers import WandbLogger

    logger = WandbLogger(project="gptlab", save_dir=str(tmp_path), offline=True)
    assert "anonymous" not in logger._wandb_init
    logger.experiment.finish()  # wandb.init (offline), then close the run
    assert "anonymous setting" not in capsys.readouterr().err
