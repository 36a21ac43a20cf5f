"""The whole path through the real Hydra configs: prepare → train → checkpoint → generate."""

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.entrypoints.train import train
from gptlab.generation import Decoding, generate
from tests.conftest import ROOT, read_metrics


def read_metric(run_dir, key):
    return [value for _, value in read_metrics(run_dir, key)]


def test_tiny_run_learns_checkpoints_and_generates(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.max_steps=30", "eval_interval=15", "data.val_batches=2", "optim.warmup_steps=5",
                   "optim.lr_decay_steps=30", "optim.lr=3e-3")
    result = train(cfg)
    run_dir = tmp_path / "run"
    losses = read_metric(run_dir, "train/loss")
    assert result["steps"] == 30 and len(losses) == 30
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5  # from ~ln(65)=4.17 down
    vals = read_metric(run_dir, "val/loss")
    assert len(vals) == 2 and vals[1] < vals[0]
    assert result["best_val_loss"] == pytest.approx(min(vals))
    assert (run_dir / "config.yaml").exists()
    assert OmegaConf.load(run_dir / "config.yaml").model.n_layer == 2
    lrs = read_metric(run_dir, "lr/decay")  # LearningRateMonitor (conf/callbacks/default.yaml)
    assert lrs[0] == pytest.approx(3e-3 / 6) and lrs[-1] < lrs[10]

    model, ckpt = load_gpt_from_lightning_ckpt(result["last_ckpt"])
    assert ckpt["tokenizer"]["kind"] == "char" and model.config.vocab_size == 65
    from gptlab.tokenizers import tokenizer_from_spec

    tok = tokenizer_from_spec(ckpt["tokenizer"])
    out = generate(model, torch.tensor([tok.encode("ROMEO:")]), Decoding(max_new_tokens=20, temperature=0.8, top_k=10))
    assert out.shape == (1, 26) and tok.decode(out[0].tolist()).startswith("ROMEO:")


def test_resume_from_checkpoint_continues_to_max_steps(tiny_cfg, tmp_path):
    first = train(tiny_cfg("trainer.max_steps=10", "eval_interval=5", "data.val_batches=1"))
    resumed = train(tiny_cfg("trainer.max_steps=16", "eval_interval=5", "data.val_batches=1",
                             f"ckpt_path={first['last_ckpt']}"))
    assert resumed["steps"] == 16


def run_script(*args, timeout=240):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**__import__("os").environ, "WANDB_MODE": "offline"})


def test_train_script_with_overrides_then_generate_script(tmp_path):
    proc = run_script("train.py", "model=tiny", "trainer.max_steps=8", "eval_interval=4", "data.val_batches=1",
                      f"hydra.run.dir={tmp_path}/run", f"paths.data_dir={tmp_path}/data",
                      "sample_after_training=40", "trainer.enable_progress_bar=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tokens per optimizer step = batch 12 × block 32" in proc.stdout
    assert "best val loss" in proc.stdout and "sample" in proc.stdout
    assert "litlogger" not in proc.stdout + proc.stderr and "LeafSpec" not in proc.stderr  # noise, dropped
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    gen = run_script("generate.py", f"ckpt_path={ckpt}", "prompt=ROMEO:", "max_new_tokens=30",
                     "temperature=0.8", "top_k=200")
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert gen.stdout.startswith("ROMEO:") and "30 tokens" in gen.stdout


def test_train_script_help_and_cfg_show_the_config():
    proc = run_script("train.py", "--cfg", "job", "model=gpt2_small", "data=shakespeare", timeout=60)
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.model.n_embd == 768 and cfg.data.tokenizer.kind == "tiktoken"
    help_ = run_script("train.py", "--help", timeout=60)
    assert help_.returncode == 0, help_.stderr
    # generate's and ehr_eval's groups live in their own folders, reached only through their configs' searchpath
    groups = help_.stdout.split("== Config ==")[0]
    models = next(line for line in groups.splitlines() if line.startswith("model: "))
    assert {"baby", "baby_cpu", "gpt2_small", "gpt2_xl", "encoder_decoder"} <= set(models[7:].split(", ")), models
    assert "\ndecoding:" not in groups and "\ntask:" not in groups, groups


@pytest.mark.parametrize(("script", "group", "folder"), [("generate.py", "decoding", "conf_generate"),
                                                         ("ehr_eval.py", "task", "conf_ehr_eval")])
def test_generate_and_ehr_eval_help_list_their_own_groups(script, group, folder):
    help_ = run_script(script, "--help", timeout=60)
    assert help_.returncode == 0, help_.stderr
    options = sorted(p.stem for p in (ROOT / "src" / "gptlab" / folder / group).glob("*.yaml"))
    assert f"\n{group}: {', '.join(options)}\n" in help_.stdout, help_.stdout[:600]
    assert "\nexperiment:" not in help_.stdout and "== Config ==" in help_.stdout  # not train's groups


def test_default_config_is_the_nanogpt_cpu_recipe():
    from tests.conftest import compose_train_cfg

    default = compose_train_cfg(ROOT / "x", ROOT / "y")
    recipe = compose_train_cfg(ROOT / "x", ROOT / "y", ["experiment=shakespeare_char_cpu"])
    assert OmegaConf.to_container(default, resolve=True) == OmegaConf.to_container(recipe, resolve=True)
    assert (default.model.n_layer, default.model.n_head, default.model.n_embd, default.model.block_size) == (4, 4, 128, 64)
    assert (default.data.batch_size, default.trainer.max_steps, default.optim.lr_decay_steps) == (12, 2000, 2000)
    assert default.model.dropout == 0.0 and default.eval_interval == 250 and default.data.val_batches == 20


def test_unknown_preset_is_a_clear_error():
    proc = run_script("train.py", "model=gpt5", timeout=60)
    assert proc.returncode != 0
    assert "Could not find 'model/gpt5'" in proc.stderr and "gpt2_small" in proc.stderr


def test_entry_point_groups_compose_from_their_own_folders():
    """decoding/ (generate) and task/ (ehr_eval) sit outside conf/ yet compose as before."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import compose_generate_cfg

    assert compose_generate_cfg(["decoding=beam", "decoding.num_beams=5"]).decoding.num_beams == 5
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("ehr_eval", overrides=["task=icu_mortality", "ckpt_path=x"])
    assert cfg.task.name == "icu_mortality_first_24h"
    assert not (ROOT / "conf" / "decoding").exists() and not (ROOT / "conf" / "task").exists()
    # scripts that score without Hydra get the settings Hydra composes (all but the run folder)
    from omegaconf import OmegaConf

    from gptlab.ehr.evaluate import eval_config

    plain = eval_config("icu_mortality", ckpt_path="x", n_trajectories=7)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        ref = OmegaConf.to_container(compose("ehr_eval", overrides=["task=icu_mortality", "ckpt_path=x", "n_trajectories=7"]),
                                     resolve=False)
    ref.pop("paths"), ref.pop("out_dir"), plain.pop("out_dir")
    assert plain == ref
