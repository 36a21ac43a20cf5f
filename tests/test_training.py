"""Training mechanics through Lightning's real Trainer and the real Hydra configs: gradient
accumulation, exact resume, DDP, precision, loggers, callbacks, sweeps and debug configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from gptlab.data import read_meta
from gptlab.data.build import build_datamodule
from gptlab.data.datamodule import RandomWindows
from gptlab.entrypoints.config import to_plain
from gptlab.entrypoints.train import train
from gptlab.lit_module import GPTLitModule
from tests.conftest import ROOT, compose_train_cfg, read_metrics

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, dropout=0.0, bias=True)
OPTIM = dict(lr=1e-3, min_lr=1e-4, warmup_steps=0, lr_decay_steps=10, weight_decay=0.1, betas=[0.9, 0.95])


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
    return grads.grads, read_metrics(tmp_path, "train/loss")


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
              "callbacks.sampler.every_n_steps=3", "callbacks.sampler.max_new_tokens=8",
              "trainer.log_every_n_steps=1")


@pytest.mark.parametrize("optim", [(), ("optim=muon", "optim/schedule=wsd", "optim.optimizer.muon_lr=2e-2",
                                          "optim.schedule.decay_fraction=0.5")], ids=["adamw-cosine", "muon-wsd"])
def test_resume_gives_the_same_losses_and_weights_as_an_uninterrupted_run(tmp_path, optim):
    """8 steps straight vs 4 steps + resume to 8 from last.ckpt: same per-step losses (bitwise on
    CPU fp32), same final weights, same best val loss. Dropout is on, so the restored RNG matters;
    the sampler callback runs in between and must not disturb it. Muon + WSD: both optimizers' states
    (Muon's momentum, AdamW's moments) and the trapezoid's LR (its decay starts at step 5, after the
    resume) must come back too."""
    data, run = tmp_path / "data", (*RESUME_RUN, *optim)
    straight = train(compose_train_cfg(tmp_path / "straight", data, [*run, "trainer.max_steps=8"]))
    half = train(compose_train_cfg(tmp_path / "half", data, [*run, "trainer.max_steps=4"]))
    resumed = train(compose_train_cfg(tmp_path / "resumed", data, [*run, "trainer.max_steps=8",
                                                                    f"ckpt_path={half['last_ckpt']}"]))
    assert straight["steps"] == resumed["steps"] == 8
    losses_straight = read_metrics(tmp_path / "straight", "train/loss")
    losses_split = read_metrics(tmp_path / "resumed", "train/loss")  # it continues the first run's log
    assert [s for s, _ in losses_straight] == list(range(8))
    assert losses_split == losses_straight  # bitwise
    assert read_metrics(tmp_path / "resumed", "val/loss") == read_metrics(tmp_path / "straight", "val/loss")
    assert resumed["best_val_loss"] == straight["best_val_loss"]

    # the best val loss survives a resume into a new run folder, even before the next validation
    no_val_yet = train(compose_train_cfg(tmp_path / "resumed6", data, [*run, "trainer.max_steps=6",
                                                                       f"ckpt_path={half['last_ckpt']}"]))
    assert no_val_yet["best_val_loss"] == half["best_val_loss"] is not None
    assert Path(no_val_yet["best_ckpt"]).exists() and Path(half["best_ckpt"]).exists()

    a = torch.load(straight["last_ckpt"], weights_only=True)
    b = torch.load(resumed["last_ckpt"], weights_only=True)
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == 8
    assert read_metrics(tmp_path / "resumed", "lr/decay") == read_metrics(tmp_path / "straight", "lr/decay")


def test_a_resume_takes_this_runs_lr_and_accumulation(tmp_path):
    """Resuming with another optim.lr or accumulate_grad_batches (devices sets it in gpt2_124m) continues
    with the new values from the next step: the LR of the config's schedule, whole accumulation windows,
    validations at multiples of eval_interval and log rows labelled with their step."""
    from gptlab.checkpoint import load_checkpoint
    from gptlab.lit_module import get_lr

    data = tmp_path / "data"
    half = train(compose_train_cfg(tmp_path / "half", data, [*RESUME_RUN, "trainer.max_steps=5"]))
    new_lr = train(compose_train_cfg(tmp_path / "lr", data, [*RESUME_RUN, "trainer.max_steps=7", "optim.lr=1e-3",
                                                             "optim.min_lr=1e-4", f"ckpt_path={half['last_ckpt']}"]))
    assert new_lr["steps"] == 7
    schedule = dict(lr=1e-3, min_lr=1e-4, warmup_steps=2, lr_decay_steps=8)
    resumed_rows = [r for r in read_metrics(tmp_path / "lr", "lr/decay") if r[0] >= 5]  # 0-4: the first run's
    assert resumed_rows == [(s, pytest.approx(get_lr(s, **schedule))) for s in (5, 6)]

    acc = train(compose_train_cfg(tmp_path / "acc", data, [*RESUME_RUN, "trainer.max_steps=9",
                                                           "trainer.accumulate_grad_batches=2",
                                                           f"ckpt_path={half['last_ckpt']}"]))
    assert load_checkpoint(acc["last_ckpt"])["GPTDataModule"]["train_batches_consumed"] == 5 + 4 * 2
    assert [s for s, _ in read_metrics(tmp_path / "acc", "train/loss")] == list(range(9))  # with the first run's
    assert "step8" in Path(acc["best_ckpt"]).name  # the validation at step 8 = 2 × eval_interval


# ---- DDP ----------------------------------------------------------------------------------------

def run_train_script(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "WANDB_MODE": "offline"})


def test_ddp_cpu_two_ranks(tmp_path):
    """`trainer=ddp_cpu trainer.devices=2`: the step equals one process accumulating rank 0's and
    rank 1's first batches (so the ranks drew different windows and DDP averaged their gradients);
    val loss is reduced over both ranks' shards; rank 0 alone logs and checkpoints."""
    overrides = ["model=tiny", "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_steps=1", "eval_interval=1",
                 "data.val_batches=4", "optim.warmup_steps=0", "sample_after_training=0",
                 "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    proc = run_train_script(*overrides, f"hydra.run.dir={tmp_path}/run", f"paths.data_dir={tmp_path}/data")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "× devices 2 = 768" in proc.stdout and proc.stdout.count("[gptlab] done") == 1
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best-step1-val" + \
        f"{read_metrics(run_dir, 'val/loss')[0][1]:.4f}.ckpt", "last.ckpt"]
    ddp = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)

    cfg = compose_train_cfg(tmp_path / "ref", tmp_path / "data", [*overrides[:1], *overrides[3:]])
    dm = build_datamodule(cfg)
    dm.setup()
    L.seed_everything(cfg.seed, verbose=False)
    module = GPTLitModule(model={**to_plain(cfg.model), "vocab_size": read_meta(dm.data_dir)["vocab_size"]},
                          optim=to_plain(cfg.optim))
    per_rank = [RandomWindows(dm.train_ids, cfg.model.block_size, cfg.data.batch_size, cfg.seed, rank=r).batch(0)
                for r in range(2)]
    trainer = L.Trainer(accelerator="cpu", max_steps=1, accumulate_grad_batches=2, gradient_clip_val=1.0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader(per_rank, batch_size=None))
    for name, tensor in module.state_dict().items():
        torch.testing.assert_close(ddp["state_dict"][name], tensor, atol=1e-6, rtol=1e-5, msg=name)

    module.eval()
    with torch.no_grad():
        full_val = torch.stack([module.model(x, y)[1] for x, y in dm.val_dataloader()]).mean()
    assert read_metrics(run_dir, "val/loss")[0][1] == pytest.approx(full_val.item(), abs=1e-5)


def test_train_loss_rows_follow_log_every_n_steps(tmp_path):
    """The module calls self.log only on the steps whose row Lightning writes: with
    log_every_n_steps=3 the rows are steps 2, 5, 8 and hold the same losses as an every-step log."""
    data = tmp_path / "data"
    every = train(compose_train_cfg(tmp_path / "every", data, [*RESUME_RUN, "trainer.max_steps=9"]))
    sparse = train(compose_train_cfg(tmp_path / "sparse", data, [*RESUME_RUN, "trainer.max_steps=9",
                                                                  "trainer.log_every_n_steps=3"]))
    assert every["steps"] == sparse["steps"] == 9
    rows = read_metrics(tmp_path / "sparse", "train/loss")
    assert [s for s, _ in rows] == [2, 5, 8]
    assert rows == [r for r in read_metrics(tmp_path / "every", "train/loss") if r[0] in (2, 5, 8)]


# ---- callbacks, loggers, precision, debug configs -------------------------------------------------

QUICK = ("model=tiny", "trainer.accelerator=cpu", "trainer.enable_model_summary=false",
         "trainer.enable_progress_bar=false", "sample_after_training=0", "data.val_batches=1",
         "trainer.log_every_n_steps=1")


def quick_train(tmp_path: Path, *overrides: str) -> dict:
    return train(compose_train_cfg(tmp_path / "run", tmp_path / "data", [*QUICK, *overrides]))


def test_default_callbacks_log_throughput_lr_and_samples(tmp_path):
    quick_train(tmp_path, "trainer.max_steps=12", "eval_interval=6", "callbacks.throughput.window=4",
                "callbacks.throughput.skip=1", "callbacks.sampler.every_n_steps=5",
                "callbacks.sampler.max_new_tokens=12", "callbacks.sampler.prompt=ROMEO:")
    run_dir = tmp_path / "run"
    tokens_per_s = read_metrics(run_dir, "perf/tokens_per_s")
    # windows of 4 steps from step 1 (skip); validation after step 6 restarts the window one step later
    assert [s for s, _ in tokens_per_s] == [4, 10] and all(v > 0 for _, v in tokens_per_s)
    assert all(0 < v < 1 for _, v in read_metrics(run_dir, "perf/mfu"))
    assert [s for s, _ in read_metrics(run_dir, "lr/decay")] == list(range(12))
    samples = (run_dir / "logs" / "samples.txt").read_text()
    assert samples.count("=== step") == 2 and "=== step 5\nROMEO:" in samples and "=== step 10\n" in samples


@pytest.mark.parametrize("strategy, rank, decodes, writes", [
    ("ddp", 0, True, True), ("ddp", 1, False, False),  # replicated weights: rank 0 alone
    ("fsdp", 0, True, True), ("fsdp", 1, True, False),  # sharded: every forward is collective
])
def test_sampler_decodes_on_every_rank_only_where_the_weights_are_sharded(tmp_path, monkeypatch, strategy, rank,
                                                                          decodes, writes):
    """Under FSDP rank 0 alone would wait forever for the other ranks' shards. A stand-in trainer:
    FSDP needs GPUs, which the test machines lack."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    import gptlab.generation
    from gptlab.callbacks.monitoring import TextSampler

    calls = []
    monkeypatch.setattr(gptlab.generation, "generate_text", lambda *a, **k: calls.append(a) or "To be")
    trainer = SimpleNamespace(is_global_zero=rank == 0, log_dir=str(tmp_path), default_root_dir=str(tmp_path),
                              loggers=[], strategy={"ddp": DDPStrategy, "fsdp": FSDPStrategy}[strategy]())
    module = SimpleNamespace(model=object(), tokenizer_spec={"kind": "char", "chars": "Tbeo "})
    text = TextSampler(prompt="T").sample(trainer, module, step=5)
    assert (len(calls), text) == ((1, "To be") if decodes else (0, None))
    assert (tmp_path / "samples.txt").exists() == writes


def test_progress_bar_updates_every_n_batches_and_at_the_end(tmp_path, monkeypatch):
    from gptlab.callbacks.monitoring import RichProgressBar

    updated = []
    monkeypatch.setattr(RichProgressBar, "_update", lambda self, bar, current, **kw: updated.append(current))
    monkeypatch.setattr(RichProgressBar, "on_train_epoch_start", lambda *a: None)
    quick_train(tmp_path, "trainer.max_steps=10", "eval_interval=100", "trainer.enable_progress_bar=true",
                "callbacks.progress_bar.update_every=4")
    assert updated == [4, 8, 10]  # optimizer steps


def test_early_stopping_callbacks_config_stops_on_a_plateau(tmp_path):
    result = quick_train(tmp_path, "callbacks=early_stopping", "callbacks.early_stopping.patience=1",
                         "callbacks.early_stopping.min_delta=10", "trainer.max_steps=20", "eval_interval=2")
    assert result["steps"] == 4  # val at 2 sets the best, val at 4 does not beat it by 10 → stop


@pytest.mark.parametrize("logger", ["tensorboard", "wandb", "[csv,wandb]"])
def test_loggers(tmp_path, logger):
    quick_train(tmp_path, f"logger={logger}", "trainer.max_steps=2", "eval_interval=2",
                "callbacks.sampler.every_n_steps=2", "callbacks.sampler.max_new_tokens=4")
    run_dir = tmp_path / "run"
    if "csv" in logger:
        assert read_metrics(run_dir, "train/loss")
    if "tensorboard" in logger:
        assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    if "wandb" in logger:
        offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
        assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])  # 16-mixed → bf16 on CPU
def test_precisions_start_on_cpu(tmp_path, precision):
    result = quick_train(tmp_path, f"trainer.precision={precision}", "trainer.max_steps=2", "eval_interval=2")
    assert result["steps"] == 2 and all(torch.isfinite(torch.tensor(v)) for _, v in
                                        read_metrics(tmp_path / "run", "train/loss"))


@pytest.mark.slow
def test_compile_starts_on_cpu(tmp_path):
    result = quick_train(tmp_path, "model.compile=true", "trainer.max_steps=3", "eval_interval=3")
    assert result["steps"] == 3 and result["best_val_loss"] < 5


@pytest.mark.parametrize("debug", ["fast_dev_run", "limit", "overfit", "profiler"])
def test_debug_configs_start(tmp_path, debug):
    result = quick_train(tmp_path, f"debug={debug}", "trainer.max_steps=4", "eval_interval=2")
    assert result["steps"] == (1 if debug == "fast_dev_run" else 4)
    if debug == "fast_dev_run":  # no checkpoint: resume=auto must never take up a wiring check
        assert result["last_ckpt"] is None and not list((tmp_path / "run").rglob("*.ckpt"))


# ---- sweeps ---------------------------------------------------------------------------------------

def test_multirun_prints_a_summary_of_best_val_loss_per_run(tmp_path):
    proc = run_train_script("-m", "optim.lr=0.001,0.01", "model=tiny", "trainer.max_steps=6", "eval_interval=3",
                            "data.val_batches=1", "sample_after_training=0", "trainer.enable_progress_bar=false",
                            f"hydra.sweep.dir={tmp_path}/sweep", f"paths.data_dir={tmp_path}/data")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {job: json.loads((tmp_path / "sweep" / job / "result.json").read_text()) for job in ("0", "1")}
    table = (tmp_path / "sweep" / "summary.txt").read_text().splitlines()
    assert "sweep summary" in proc.stdout and table[0].split()[:2] == ["job", "best"]
    ranked = sorted(results, key=lambda j: results[j]["best_val_loss"])
    assert [line.split()[0] for line in table[1:]] == ranked
    for line in table[1:]:
        job, loss, steps, _, override = line.split()
        assert float(loss) == pytest.approx(results[job]["best_val_loss"], abs=1e-4) and steps == "6"
        assert override == ["optim.lr=0.001", "optim.lr=0.01"][int(job)]



def test_the_sweep_summary_reads_jobs_in_named_folders(tmp_path):
    """hydra.sweep.subdir=${hydra:job.override_dirname} (hparams_search=speedrun_ablation) names job
    folders by their overrides: the closing table must still find them (it once said "no runs found")."""
    from gptlab.entrypoints.sweep_summary import format_table, sweep_rows

    for name, loss, overrides in (("+ablation=rope,seed=1", 1.9, ["+ablation=rope", "seed=1"]),
                                  ("+ablation=gpt2,seed=1", 2.2, ["+ablation=gpt2", "seed=1"])):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (tmp_path / name / "result.json").write_text(json.dumps({"best_val_loss": loss, "steps": 5, "wall_seconds": 1.0}))
    (tmp_path / "logs").mkdir()  # not a job: neither numbered nor holding a job's files
    rows = sweep_rows(tmp_path)
    assert [r["job"] for r in rows] == ["+ablation=gpt2,seed=1", "+ablation=rope,seed=1"]
    table = format_table(rows).splitlines()
    assert len(table) == 3 and table[1].split()[1] == "1.9000" and table[1].split()[-1] == "+ablation=rope"

def test_a_model_sweep_without_a_sweep_dir_lands_in_one_default_folder(tmp_path):
    """The default sweep folder names the model through Hydra's `hydra:` resolver, which the sweeper
    cannot use and each job would resolve with its own model: PinSweepDir resolves it once."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "model=tiny,baby_cpu", "trainer.max_steps=2",
                           "eval_interval=2", "data.val_batches=1", "sample_after_training=0",
                           "trainer.enable_progress_bar=false", f"paths.data_dir={tmp_path}/data"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "shakespeare-baby_cpu").glob("multirun-*")  # the default model's name
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert all((sweep / job / "result.json").exists() for job in ("0", "1"))
    table = (sweep / "summary.txt").read_text()
    assert "model=tiny" in table and "model=baby_cpu" in table


# ---- recipes and cluster configs ------------------------------------------------------------------

@pytest.mark.parametrize("devices", [1, 2, 4, 8])
def test_gpt2_124m_recipe_is_nanogpts(tmp_path, devices):
    cfg = compose_train_cfg(tmp_path / "r", tmp_path / "d", ["experiment=gpt2_124m", f"trainer.devices={devices}"])
    tokens = cfg.data.batch_size * cfg.model.block_size * cfg.trainer.accumulate_grad_batches * devices
    assert tokens == 491_520 and cfg.trainer.max_steps == cfg.optim.lr_decay_steps == 600_000
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps, cfg.optim.weight_decay) == (6e-4, 6e-5, 2000, 0.1)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.compile and cfg.data.name == "openwebtext"
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) == (12, 12, 768)


@pytest.mark.slow  # ~2.5 min here: 20 micro-batches × 2 ranks with GPT-2's 50k vocabulary
def test_gpt2_124m_recipe_prints_its_arithmetic_and_runs_shrunk_on_cpu(tmp_path):
    """The recipe's code path on this CPU: shakespeare instead of openwebtext, a 1-layer model, 2 devices."""
    proc = run_train_script("experiment=gpt2_124m", "data=shakespeare", "trainer=ddp_cpu", "trainer.devices=2",
                            "trainer.precision=bf16-mixed", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
                            "model.block_size=64", "model.compile=false", "trainer.max_steps=1", "eval_interval=1",
                            "data.val_batches=2", "sample_after_training=0", "trainer.enable_progress_bar=false",
                            f"hydra.run.dir={tmp_path}/run", f"paths.data_dir={tmp_path}/data")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch 12 × block 64 × accumulation 20 × devices 2 = 30,720" in proc.stdout


def test_fsdp_strategy_config_builds():
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from gptlab.model import Block

    cfg = compose_train_cfg(ROOT / "x", ROOT / "y", ["trainer=fsdp", "model=gpt2_xl"])
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and isinstance(strategy.kwargs["auto_wrap_policy"], ModuleWrapPolicy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block}


def test_fsdp_clips_by_norm_through_the_root_fsdp_module():
    """Lightning's FSDP plugin refuses to clip by norm (it has no handle on the root module), and
    trainer=fsdp keeps gradient_clip_val=1.0: the module hands the clipping to FSDP's own
    clip_grad_norm_, the norm over every rank's shard. (FSDP needs GPUs: the root is a stand-in.)"""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    class Root(torch.nn.Module):  # FullyShardedDataParallel's clipping entry point
        def __init__(self):
            super().__init__()
            self.calls = []

        def clip_grad_norm_(self, max_norm):
            self.calls.append(max_norm)

    strategy = FSDPStrategy()
    strategy.model = Root()
    module = GPTLitModule(model=TINY, optim=OPTIM)
    module._trainer = SimpleNamespace(strategy=strategy, callbacks=[], precision="bf16-mixed")
    optimizer = module.configure_optimizers()["optimizer"]
    module.configure_gradient_clipping(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm=None)
    assert strategy.model.calls == [1.0]


def test_slurm_launcher_config_takes_nodes_and_devices_from_the_trainer():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")  # the `slurm` extra
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8",
                                          "trainer.num_nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
    assert launcher._target_.endswith("SlurmLauncher")


@pytest.mark.slow
def test_optuna_search_runs_trials_and_prints_the_summary(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")  # the `sweep` extra
    proc = run_train_script("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                            "hydra.sweeper.sampler.n_startup_trials=1", "model=tiny", "trainer.max_steps=3",
                            "eval_interval=3", "data.val_batches=1", "sample_after_training=0",
                            "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path}/sweep",
                            f"paths.data_dir={tmp_path}/data")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Best value" in proc.stdout + proc.stderr and "sweep summary" in proc.stdout
    assert len((tmp_path / "sweep" / "summary.txt").read_text().splitlines()) == 3


def test_fast_cpu_recipe_differs_from_nanogpts_only_in_peak_lr(tmp_path):
    from omegaconf import OmegaConf

    base = OmegaConf.to_container(compose_train_cfg(tmp_path / "r", tmp_path / "d", ["experiment=shakespeare_char_cpu"]))
    fast = OmegaConf.to_container(compose_train_cfg(tmp_path / "r", tmp_path / "d",
                                                    ["experiment=shakespeare_char_cpu_fast"]))
    assert fast["optim"].pop("lr") == 3e-3 and base["optim"].pop("lr") == 1e-3
    assert fast == base


def test_resume_auto_in_a_sweep_only_takes_the_jobs_own_checkpoint(tmp_path, monkeypatch):
    """Jobs of one sweep train different settings: job 1 must never continue job 0's last.ckpt."""
    from omegaconf import OmegaConf

    from gptlab import training as train_entry

    sweep = tmp_path / "outputs" / "run" / "multirun-x"
    (sweep / "0" / "checkpoints").mkdir(parents=True)
    (sweep / "0" / "checkpoints" / "last.ckpt").write_bytes(b"job 0")
    job1 = OmegaConf.create({"paths": {"run_dir": str(sweep / "1")}})
    monkeypatch.setattr(train_entry, "in_multirun", lambda: True)
    assert train_entry.find_last_checkpoint(job1) is None
    (sweep / "1" / "checkpoints").mkdir(parents=True)
    (sweep / "1" / "checkpoints" / "last.ckpt").write_bytes(b"job 1")
    assert train_entry.find_last_checkpoint(job1) == str(sweep / "1" / "checkpoints" / "last.ckpt")

    # a single run continues the newest run of its run_name
    monkeypatch.setattr(train_entry, "in_multirun", lambda: False)
    single = tmp_path / "outputs" / "run"
    (single / "t1" / "checkpoints").mkdir(parents=True)
    (single / "t1" / "checkpoints" / "last.ckpt").write_bytes(b"t1")
    new_run = OmegaConf.create({"paths": {"run_dir": str(single / "t2")}})
    assert train_entry.find_last_checkpoint(new_run) == str(single / "t1" / "checkpoints" / "last.ckpt")


def test_last_ckpt_holds_the_final_step_when_max_steps_is_not_a_multiple_of_eval_interval(tiny_cfg):
    from gptlab.checkpoint import load_checkpoint

    result = train(tiny_cfg("trainer.max_steps=6", "eval_interval=4", "data.val_batches=1"))
    assert load_checkpoint(result["last_ckpt"])["global_step"] == 6
    assert "step4" in Path(result["best_ckpt"]).name  # the best is still the validated step 4


def test_resuming_a_finished_run_keeps_its_final_val_loss(tiny_cfg):
    """Re-launching a sweep resumes its finished jobs, which train and validate nothing: their
    result.json must keep the final val loss (scaling/fit.py reads it), not become null."""
    first = train(tiny_cfg("trainer.max_steps=4", "eval_interval=2", "data.val_batches=1"))
    again = train(tiny_cfg("trainer.max_steps=4", "eval_interval=2", "data.val_batches=1",
                           f"ckpt_path={first['last_ckpt']}"))
    assert first["final_val_loss"] is not None and again["steps"] == 4
    assert again["final_val_loss"] == first["final_val_loss"]
    assert json.loads((Path(first["run_dir"]) / "result.json").read_text())["final_val_loss"] == first["final_val_loss"]
