"""Analysis: curves reader, attention maps, the masked-LM objective, and the report end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.nn import functional as F

from gptlab.analysis import curves
from gptlab.analysis.attention import attention_weights, sharpest_head
from gptlab.analysis.report import ReportOptions, write_report
from gptlab.lit_module import GPTLitModule, mask_tokens
from tests.conftest import ROOT, tiny_gpt

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=40)


# ---- curves ------------------------------------------------------------------------------------
def test_csv_and_tensorboard_readers_agree_and_return_monotone_steps(tmp_path):
    """The same metrics logged through Lightning's CSV and TensorBoard loggers read back identically;
    steps come back strictly increasing even when a resumed run logged some twice, out of order."""
    csv_logger = CSVLogger(tmp_path, name="logs", version="")
    tb_logger = TensorBoardLogger(tmp_path, name="tensorboard", version="")
    steps = [0, 1, 2, 3, 4, 2, 3, 4, 5]  # resumed from step 2: the second values win
    for i, s in enumerate(steps):
        for logger in (csv_logger, tb_logger):
            logger.log_metrics({"train/loss": 4.0 - 0.1 * i}, step=s)
            if s % 2 == 1:
                logger.log_metrics({"val/loss": 5.0 - s}, step=s)
    csv_logger.save()
    tb_logger.finalize("success")
    from_csv = curves.read_csv_metrics(tmp_path / "logs" / "metrics.csv")
    from_tb = curves.read_tensorboard_metrics(tmp_path / "tensorboard")
    for m in (from_csv, from_tb):
        assert m["train/loss"].steps.tolist() == [0, 1, 2, 3, 4, 5]
        assert m["train/loss"].values == pytest.approx([4.0, 3.9, 3.5, 3.4, 3.3, 3.2])
        assert m["val/loss"].steps.tolist() == [1, 3, 5]
    assert from_tb["train/loss"].values == pytest.approx(from_csv["train/loss"].values)


def test_find_runs_in_a_multirun_folder_in_numeric_order(tmp_path):
    for job in ("0", "2", "10", "1"):
        (tmp_path / job / "logs").mkdir(parents=True)
        (tmp_path / job / "config.yaml").write_text("seed: 1\n")
        (tmp_path / job / ".hydra").mkdir()
        (tmp_path / job / ".hydra" / "config.yaml").write_text("seed: 1\n")  # Hydra's copy is not a run
    assert [p.name for p in curves.find_runs(tmp_path)] == ["0", "1", "2", "10"]
    assert curves.find_runs(tmp_path / "2") == [tmp_path / "2"]
    with pytest.raises(FileNotFoundError, match="holds no run"):
        curves.find_runs(tmp_path / "2" / "logs")


def test_tokens_per_step_from_config():
    cfg = {"data": {"batch_size": 12}, "model": {"block_size": 64},
           "trainer": {"accumulate_grad_batches": 4, "devices": 2, "num_nodes": 1}}
    assert curves.tokens_per_step(cfg) == 12 * 64 * 4 * 2
    assert curves.tokens_per_step({**cfg, "trainer": {"devices": "auto"}}) is None


# ---- attention ---------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
def test_attention_rows_sum_to_one_and_causal_upper_triangle_is_zero(causal):
    torch.manual_seed(0)
    model = tiny_gpt(vocab_size=40, causal=causal).eval()
    w = attention_weights(model, list(range(12)))
    assert w.shape == (2, 2, 12, 12)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    upper = np.triu(w, k=1)
    if causal:
        assert np.all(upper == 0.0)
    else:
        assert np.all(upper[..., 0, 1:] > 0)  # the first token reads every later one
    layer, head = sharpest_head(w)
    assert 0 <= layer < 2 and 0 <= head < 2


# ---- masked-LM objective -----------------------------------------------------------------------
def test_mask_tokens_follows_bert_15_percent_and_80_10_10():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 40, (64, 512), generator=g)
    inputs, targets = mask_tokens(x, 0.15, mask_token_id=40, vocab_size=40, generator=g)
    chosen = targets != -1
    assert chosen.float().mean().item() == pytest.approx(0.15, abs=0.005)
    assert torch.equal(targets[chosen], x[chosen])
    assert torch.equal(inputs[~chosen], x[~chosen])  # unchosen positions are never corrupted
    n = chosen.sum().item()
    masked = (inputs[chosen] == 40).sum().item() / n
    kept = (inputs[chosen] == x[chosen]).sum().item() / n  # 10% kept + random draws that hit the same id
    assert masked == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1 + 0.1 / 40, abs=0.02)
    assert int(inputs.max()) <= 40 and not (inputs[chosen & (inputs != 40)] == 40).any()


def test_mlm_scores_only_masked_positions_and_reloads_with_the_same_vocabulary():
    optim = dict(lr=1e-3, min_lr=1e-4, warmup_steps=1, lr_decay_steps=10)
    module = GPTLitModule(model=dict(TINY, causal=False), optim=optim, objective="mlm")
    assert module.mask_token_id == 40 and module.model.config.vocab_size == 41
    again = GPTLitModule(**module.hparams)  # what load_from_checkpoint does
    assert again.model.config.vocab_size == 41 and again.mask_token_id == 40

    x = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(1))
    inputs, targets = module._mlm_batch(x, torch.Generator().manual_seed(2))
    logits, loss = module.model(inputs, targets)
    logits.retain_grad()
    loss.backward()
    scored = targets != -1
    assert scored.any() and (~scored).any()
    assert torch.all(logits.grad[~scored] == 0)  # unmasked positions contribute nothing
    assert torch.all(logits.grad[scored].abs().sum(-1) > 0)
    assert loss.item() == pytest.approx(F.cross_entropy(logits[scored], x[scored]).item(), rel=1e-5)
    with pytest.raises(ValueError, match="objective='nsp'"):
        GPTLitModule(model=dict(TINY), optim=optim, objective="nsp")


# ---- the report, end to end --------------------------------------------------------------------
REPORT_FILES = {"report.md", "curves.png", "curves_compare.png", "masked_accuracy.png", "attention_grid.png",
                "attention_head.png", "samples_temperature.png", "samples_strategy.png", "position_loss.png",
                "embeddings_pca.png"}


def _compose_analyze(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("analyze", overrides=overrides)


def test_report_end_to_end_on_tiny_runs(tmp_path):
    """Two tiny runs laid out as a Hydra multirun folder (0/ causal, 1/ masked-LM): analyze.py's
    run_dir=<folder> reports on the first and overlays the second."""
    from gptlab.entrypoints.analyze import run_analyze
    from gptlab.entrypoints.train import train
    from tests.conftest import TINY_RUN, compose_train_cfg

    short = ["trainer.max_steps=8", "eval_interval=4", "data.val_batches=1", "optim.warmup_steps=2",
             "optim.lr_decay_steps=8", "model.block_size=24"]
    runs = tmp_path / "multirun"
    for job, extra in (("0", []), ("1", ["model.causal=false", "objective=mlm", "sample_after_training=0"])):
        train(compose_train_cfg(runs / job, tmp_path / "data", [*TINY_RUN, *short, *extra]))
    from gptlab.analysis.curves import read_metrics

    lr = read_metrics(runs / "0")["lr"]  # the schedule plotted beneath the losses, from LearningRateMonitor
    assert lr.steps.tolist() == list(range(len(lr.steps))) and lr.values[-1] < lr.values[3]
    cfg = _compose_analyze([f"run_dir={runs}", "max_new_tokens=8", "prompt=ROMEO: hi", "log_scale=true", "position_windows=64",
                            "neighbour_queries=4"])
    out = run_analyze(cfg)
    assert out == runs / "report"
    assert {p.name for p in out.iterdir()} == REPORT_FILES | {"curves_log.png"}
    md = (out / "report.md").read_text()
    assert f"# Report: `{runs / '0'}`" in md
    for section in ("## Loss curves", "### Compared runs", "## Attention", "### Temperature", "### Decoding strategy",
                    "## Loss by position", "## Token embeddings"):
        assert section in md
    assert "model.causal=False objective=mlm" in md  # labels are the settings that differ
    assert "temperature 1.2" in md and "top-p 0.9" in md
    assert not [p for p in runs.iterdir() if p.name.startswith(".report")]

    # a failing analysis leaves the complete report in place and no temporary folder behind
    before = (out / "report.md").read_text()

    def broken(run_dir):
        raise RuntimeError("data went missing")

    with pytest.raises(RuntimeError, match="data went missing"):
        write_report(runs / "0", broken, out_dir=out, options=ReportOptions(max_new_tokens=4))
    assert (out / "report.md").read_text() == before and {p.name for p in out.iterdir()} >= REPORT_FILES
    assert sorted(p.name for p in runs.iterdir() if p.name.startswith(".")) == []
