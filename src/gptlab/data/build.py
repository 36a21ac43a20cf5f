"""From a composed train config (Hydra/OmegaConf) to a GPTDataModule: which folder the prepared bins
live in, which prepare function fills it, and the tokenizer config the data is tokenized with."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from gptlab.conf import CONF_DIR
from gptlab.data.datamodule import GPTDataModule
from gptlab.data.prepare import ensure_prepared, ensure_prepared_hf


def to_plain(cfg: Any) -> Any:
    """A resolved plain dict/list (checkpoints must hold no OmegaConf objects: weights_only loading)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_list(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def tokenizer_config(cfg: DictConfig) -> dict[str, Any]:
    """data.tokenizer as a dict. The group override `data/tokenizer=bpe` gives the group's file;
    `data.tokenizer=bpe` (a plain value in Hydra's eyes) is accepted as shorthand for it."""
    tok = cfg.data.tokenizer
    if isinstance(tok, str):
        group_file = CONF_DIR / "data" / "tokenizer" / f"{tok}.yaml"
        if not group_file.exists():
            choices = sorted(p.stem for p in group_file.parent.glob("*.yaml"))
            raise ValueError(f"data.tokenizer={tok!r}: no {group_file}; choose one of {choices}")
        tok = OmegaConf.load(group_file)
    return to_plain(tok)


def data_folder(cfg: DictConfig) -> Path:
    """One prepared folder per dataset name × tokenizer config, so switching tokenizers never
    overwrites (or silently reuses) another tokenizer's bins. `data=text` names the corpus by its
    path too, so two corpora never prepare into (and race for) one folder, and switching between
    them does not prepare each again."""
    tok = tokenizer_config(cfg)
    tag = "-".join(str(v) for k, v in sorted(tok.items()) if k != "kind" and not isinstance(v, (list, dict)))
    name = str(cfg.data.name)
    if name == "text" and cfg.data.get("path"):
        path = Path(str(cfg.data.path)).expanduser().resolve()
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
        name = "text-" + re.sub(r"[^\w.-]+", "_", path.name) + "-" + digest
    if cfg.data.get("kind") == "hf":  # a Hub name or a local path: one safe folder per dataset, config, split
        name = "hf-" + re.sub(r"[^\w.-]+", "_", "-".join(str(p) for p in (name, cfg.data.config, cfg.data.split) if p))
    return Path(cfg.paths.data_dir) / name / (tok["kind"] + (f"-{tag}" if tag else ""))


def build_datamodule(cfg: DictConfig) -> GPTDataModule:
    """The run's GPTDataModule; its prepare_data() fills data_folder(cfg) if that is not done yet."""
    out = data_folder(cfg)
    tok, frac = tokenizer_config(cfg), cfg.data.get("val_fraction")
    if cfg.data.get("prepare"):  # non-text data names its own prepare: f(data config dict, out dir) → meta
        prepare_fn, data_cfg = get_method(cfg.data.prepare), {**to_plain(cfg.data), "tokenizer": tok}
        prepare = lambda: prepare_fn(data_cfg, out)  # noqa: E731
    elif cfg.data.get("kind") == "hf":
        d = cfg.data
        options = dict(config=d.config, split=d.split, text_column=d.text_column, val_fraction=frac,
                       num_proc=d.num_proc, split_seed=d.split_seed)
        prepare = lambda: ensure_prepared_hf(d.name, out, tok, **options)  # noqa: E731
    else:
        prepare = lambda: ensure_prepared(cfg.data.path, out, tok, frac)  # noqa: E731
    return GPTDataModule(
        out, block_size=cfg.model.block_size, batch_size=cfg.data.batch_size, val_batches=cfg.data.val_batches,
        num_workers=cfg.data.num_workers, seed=cfg.seed, prepare=prepare,
        windows=get_method(cfg.data.windows) if cfg.data.get("windows") else None,
    )
