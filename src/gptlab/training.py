"""A training run: build (data, model, Trainer) → fit → report. `gptlab-train` / `python train.py`
(gptlab.entrypoints.train) call `train` after the checks that need no Lightning."""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import lightning_utilities.core.rank_zero
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from gptlab.callbacks.history import continue_history
from gptlab.callbacks.monitoring import SHARDED_STRATEGIES
from gptlab.callbacks.progress import emit
from gptlab.checkpoint import check_resumable, check_writable, load_checkpoint
from gptlab.data import GPTDataModule, read_meta
from gptlab.data.build import build_datamodule, to_plain
from gptlab.errors import UserError, unknown_key
from gptlab.lit_module import GPTLitModule
from gptlab.preflight import run_checks
from gptlab.tasks import TASK_OBJECTIVES


@rank_zero_only
def say(message: str) -> None:
    """User-facing progress lines, printed once (rank 0) to stdout and logged to train.log."""
    for line in message.splitlines():
        emit(line)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def find_last_checkpoint(cfg: DictConfig) -> str | None:
    """resume=auto: the newest last.ckpt among earlier runs of this run_name.

    In a sweep only the job's own folder counts: the jobs of one sweep train different settings, so
    one must never continue another's checkpoint. Re-launch the sweep with
    `hydra.sweep.dir=<its folder>` to resume every job where it stopped."""
    run_dir = Path(cfg.paths.run_dir)
    found = run_dir.glob("checkpoints/last.ckpt") if in_multirun() else run_dir.parent.glob("*/checkpoints/last.ckpt")
    candidates = sorted(found, key=lambda p: p.stat().st_mtime)
    return str(candidates[-1]) if candidates else None


def configure_wandb_offline() -> None:
    """wandb without an account: log offline instead of failing at wandb.init()."""
    if "WANDB_MODE" not in os.environ and not os.environ.get("WANDB_API_KEY"):
        netrc = Path.home() / ".netrc"
        if not (netrc.exists() and "api.wandb.ai" in netrc.read_text()):
            os.environ["WANDB_MODE"] = "offline"


def instantiate_all(group: DictConfig | None) -> list[Any]:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


class _DropAdvert(logging.Filter):
    """Lightning 2.6 logs a tip advertising its cloud logger at every run, and a notice whenever the run
    brings its own model summary (conf/callbacks/default.yaml does); the run's own lines matter."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "litlogger" not in message and "already configured with model summary" not in message


def quiet_lightning_notices() -> None:
    """Drop two lines every run printed that say nothing about the run: Lightning's litlogger
    advert, and the deprecation warning its pytree helper triggers in torch ≥ 2.10 (harmless)."""
    logger = lightning_utilities.core.rank_zero.log  # where rank_zero_info logs (Lightning names it on import)
    if not any(isinstance(f, _DropAdvert) for f in logger.filters):
        logger.addFilter(_DropAdvert())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def check_schedule(cfg: DictConfig) -> None:
    """Fail at the start, naming the key, on schedule values that would otherwise stop the run with a
    bare ZeroDivisionError at its first step or validation, or never end it."""
    acc, o, t = cfg.trainer.accumulate_grad_batches, cfg.optim, cfg.trainer
    if not (isinstance(cfg.eval_interval, int) and cfg.eval_interval >= 1):
        raise UserError(f"eval_interval={cfg.eval_interval!r}: give an integer ≥ 1 (optimizer steps between "
                         f"validations and checkpoints)")
    if not (isinstance(acc, int) and acc >= 1):
        raise UserError(f"trainer.accumulate_grad_batches={acc!r}: give an integer ≥ 1 (micro-batches per "
                         f"optimizer step)")
    if not o.lr > 0:
        raise UserError(f"optim.lr={o.lr}: the peak learning rate must be > 0")
    if not 0 <= o.min_lr <= o.lr:
        raise UserError(f"optim.min_lr={o.min_lr}: give a value in [0, optim.lr={o.lr}] (the cosine decays "
                         f"from lr to min_lr)")
    # the training stream is endless, so an epoch never ends unless limit_train_batches sizes it
    sized = isinstance(t.get("limit_train_batches"), int) or t.get("overfit_batches") or t.get("fast_dev_run")
    if t.max_steps < 0 and t.get("max_epochs") != -1 and not t.get("max_time") and not sized:
        raise UserError(
            f"trainer.max_steps={t.max_steps} with trainer.max_epochs={t.get('max_epochs')} would train forever: "
            f"the training batches are an endless stream of random windows, so no epoch ever ends. Set "
            f"trainer.max_steps (optimizer steps), or trainer.limit_train_batches=<batches per epoch>"
        )


def check_trainer_keys(trainer: DictConfig) -> None:
    """`+trainer.max_step=5` names the unknown key and the nearest real one now, not as Trainer's
    TypeError after the data is prepared."""
    if trainer.get("_target_") not in ("lightning.pytorch.Trainer", "lightning.pytorch.trainer.trainer.Trainer"):
        return
    known = inspect.signature(L.Trainer).parameters
    for key in trainer:
        if not str(key).startswith("_") and key not in known:
            raise unknown_key("trainer", str(key), known)


def check_config(cfg: DictConfig, preflight: bool = True) -> None:
    if cfg.resume not in (None, "auto"):
        raise UserError(f"resume={cfg.resume!r}: use resume=auto (newest last.ckpt of this run_name) or "
                         f"ckpt_path=<a .ckpt>; null starts fresh")
    check_schedule(cfg)
    check_trainer_keys(cfg.trainer)
    if preflight and int(os.environ.get("LOCAL_RANK", 0)) == 0:  # DDP's other ranks: their launcher checked
        run_checks(cfg)  # before any data is prepared: ckpt_path exists, GPUs are there, the memory fits


def build_module(cfg: DictConfig, meta: dict[str, Any], data_dir: Path) -> GPTLitModule:
    """conf's `module` (a partial GPTLitModule) completed with what only the prepared data knows: the
    model (the model node, a partial GPTConfig, given the data's vocabulary size when model.vocab_size is
    null) and the data's tokenizer."""
    node = to_plain(cfg.model)
    compile_model = node.pop("compile", False)  # the LitModule's setting (configure_model), not a GPTConfig field
    if node.get("vocab_size") is not None and meta["vocab_size"] > node["vocab_size"]:
        raise UserError(
            f"data {data_dir} has vocab_size {meta['vocab_size']} but model.vocab_size is "
            f"{node['vocab_size']}: set model.vocab_size=null (take the data's) or ≥ {meta['vocab_size']}"
        )
    vocab_size = meta["vocab_size"] if node.get("vocab_size") is None else node["vocab_size"]
    try:
        config = instantiate(node)(vocab_size=vocab_size)
    except TypeError as e:  # e.g. a misspelt +model.<key>
        raise UserError(f"model: {e} (the model node passes every key but compile to {node['_target_']})") from e
    except ValueError as e:  # the config's own checks of model.* values (model.py raises plain ValueError)
        raise UserError(f"model: {e}") from None
    model = config.to_dict() | {"compile": compile_model}
    module = instantiate(cfg.module, _convert_="all")(model=model, tokenizer=meta["tokenizer"])
    if meta["vocab_size"] > module.model.config.vocab_size:  # init_from: the vocabulary is the checkpoint's
        raise UserError(
            f"data {data_dir} has vocab_size {meta['vocab_size']} but init_from={cfg.init_from} has "
            f"{module.model.config.vocab_size} token embeddings: train it on data tokenized as it was (GPT-2: "
            f"data.tokenizer=tiktoken), or from scratch (init_from=scratch)"
        )
    return module


def build_trainer(cfg: DictConfig) -> L.Trainer:
    if "wandb" in (cfg.get("logger") or {}):
        configure_wandb_offline()
    callbacks = instantiate_all(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):  # a bar callback with the bar disabled is an error
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if cfg.get("objective") in TASK_OBJECTIVES:  # task models answer inputs; val/acc reports them, not a text sample
        callbacks = [c for c in callbacks if type(c).__name__ != "TextSampler"]
    if not cfg.trainer.get("enable_model_summary", True):
        callbacks = [c for c in callbacks if not isinstance(c, ModelSummary)]
    return instantiate(cfg.trainer, logger=instantiate_all(cfg.get("logger")) or False, callbacks=callbacks)


def build(cfg: DictConfig) -> tuple[GPTDataModule, GPTLitModule, L.Trainer, dict[str, Any]]:
    """Data first: the model's vocabulary size comes from the prepared data. Returns the data's meta too."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")  # TF32 on Ampere+ GPUs; no effect on CPU
    datamodule = build_datamodule(cfg)
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        datamodule.prepare_data()
    meta = read_meta(datamodule.data_dir)
    module = build_module(cfg, meta, datamodule.data_dir)
    trainer = build_trainer(cfg)
    if trainer.is_global_zero:
        # fail now, not at the first checkpoint: weights + two AdamW moments, fp32
        check_writable(Path(cfg.paths.run_dir), need_bytes=3 * 4 * module.model.num_params())
        OmegaConf.save(cfg, Path(cfg.paths.run_dir) / "config.yaml", resolve=True)
    return datamodule, module, trainer, meta


def announce(cfg: DictConfig, datamodule: GPTDataModule, module: GPTLitModule, trainer: L.Trainer,
             meta: dict[str, Any]) -> None:
    block, batch, acc = module.model.config.block_size, cfg.data.batch_size, cfg.trainer.accumulate_grad_batches
    say(
        f"[gptlab] {module.model.num_params() / 1e6:.2f}M parameters | data {datamodule.data_dir} "
        f"({meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, vocab {meta['vocab_size']})\n"
        f"[gptlab] tokens per optimizer step = batch {batch} × block {block} × accumulation {acc} × devices "
        f"{trainer.world_size} = {batch * block * acc * trainer.world_size:,}\n[gptlab] run folder {cfg.paths.run_dir}"
    )


def checkpoint_to_resume(cfg: DictConfig, module: GPTLitModule) -> str | None:
    """ckpt_path, or with resume=auto the newest last.ckpt of this run_name; checked against the model."""
    ckpt_path = cfg.ckpt_path
    if ckpt_path is None and cfg.resume == "auto":
        ckpt_path = find_last_checkpoint(cfg)
        say(f"[gptlab] resume=auto: {'resuming from ' + ckpt_path if ckpt_path else 'no last.ckpt, starting fresh'}")
    if ckpt_path is not None:
        check_resumable(ckpt_path, module.hparams.model)
    return ckpt_path


def keep_history(cfg: DictConfig, trainer: L.Trainer, ckpt_path: str | None) -> None:
    """The loggers continue the metrics of the run being resumed; nothing logged is deleted."""
    step = load_checkpoint(ckpt_path, mmap=True).get("global_step") if ckpt_path else None
    continue_history(trainer.loggers, cfg.paths.run_dir, ckpt_path, step)


def fit(trainer: L.Trainer, module: GPTLitModule, datamodule: GPTDataModule, ckpt_path: str | None) -> float:
    """trainer.fit; returns its wall-clock seconds."""
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    wall = time.perf_counter() - start
    for lg in trainer.loggers:  # close the wandb run, or the next run in this process (-m) would append to it
        if type(lg).__name__ == "WandbLogger" and trainer.is_global_zero:
            lg.experiment.finish()
    return wall


def report(cfg: DictConfig, trainer: L.Trainer, wall: float) -> dict[str, Any]:
    """The run's figures, printed and written to <run_dir>/result.json (read by the multirun summary)."""
    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_score if ckpt_cb is not None else None
    result = {
        "best_val_loss": float(best) if best is not None else None,
        "final_val_loss": float(v) if (v := trainer.callback_metrics.get("val/loss")) is not None else None,
        "best_ckpt": getattr(ckpt_cb, "best_model_path", None) or None,
        "last_ckpt": getattr(ckpt_cb, "last_model_path", None) or None,
        "run_dir": str(cfg.paths.run_dir),
        "steps": trainer.global_step,
        "wall_seconds": wall,
    }
    path = Path(cfg.paths.run_dir) / "result.json"
    if result["final_val_loss"] is None and path.exists():
        # a resume with nothing left to train (a re-launched sweep's finished job) validates nothing:
        # the run's final val loss is the one its earlier launch wrote at this same step
        earlier = json.loads(path.read_text())
        if earlier.get("steps") == result["steps"]:
            result["final_val_loss"] = earlier.get("final_val_loss")
    if trainer.is_global_zero:
        path.write_text(json.dumps(result, indent=1))
    best = result["best_val_loss"]
    best_text = f"best val loss {best:.4f}" if best is not None else \
        f"no validation ran (one every eval_interval={cfg.eval_interval} steps)"
    best_ckpt = f", {result['best_ckpt']} (best)" if result["best_ckpt"] else ""
    say(
        f"[gptlab] done: {result['steps']} steps in {wall:.0f} s | {best_text}\n"
        f"[gptlab] checkpoints: {result['last_ckpt']} (last){best_ckpt}\n"
        f"[gptlab] logs: {trainer.log_dir}"
    )
    return result


def sample_after_training(cfg: DictConfig, trainer: L.Trainer, module: GPTLitModule, meta: dict[str, Any]) -> None:
    # sharded weights (FSDP, DeepSpeed): every rank decodes in step, since each forward is collective
    decodes = trainer.is_global_zero or isinstance(trainer.strategy, SHARDED_STRATEGIES)
    if not decodes or cfg.sample_after_training <= 0 or trainer.interrupted or module.objective in TASK_OBJECTIVES:
        return
    from gptlab.generation import Decoding, generate_text
    from gptlab.tokenizers import tokenizer_from_spec

    prompt = "\n" if meta["tokenizer"]["kind"] == "char" else ""  # "": start at <|endoftext|>
    decoding = Decoding(max_new_tokens=cfg.sample_after_training, temperature=0.8, top_k=200, seed=cfg.seed)
    text = generate_text(module.model, tokenizer_from_spec(meta["tokenizer"]), prompt, decoding)
    if trainer.is_global_zero:
        print("[gptlab] sample (temperature 0.8, top-k 200):\n" + text)


def train(cfg: DictConfig, preflight_done: bool = False) -> dict[str, Any]:
    """Fit the configured model; returns the run's figures (best val loss, paths, timings).
    preflight_done: gptlab.preflight.run_checks already passed (the entry point runs it first)."""
    quiet_lightning_notices()
    check_config(cfg, preflight=not preflight_done)
    datamodule, module, trainer, meta = build(cfg)
    announce(cfg, datamodule, module, trainer, meta)
    ckpt_path = checkpoint_to_resume(cfg, module)
    keep_history(cfg, trainer, ckpt_path)
    wall = fit(trainer, module, datamodule, ckpt_path)
    result = report(cfg, trainer, wall)
    sample_after_training(cfg, trainer, module, meta)
    return result
