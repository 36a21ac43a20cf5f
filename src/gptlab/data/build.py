"""From a composed train config (Hydra/OmegaConf) to a GPTDataModule: which folder the prepared bins
live in, which prepare function fills it, and the tokenizer config the data is tokenized with."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from gptlab.cfg import to_plain  # noqa: F401  (re-exported: data.build is where callers took it from)
from gptlab.conf import CONF_DIR
from gptlab.data.datamodule import GPTDataModule
from gptlab.data.prepare import ensure_prepared, ensure_prepared_hf
from gptlab.errors import UserError


def tokenizer_config(tok: Any) -> dict[str, Any]:
    """A data node's `tokenizer` as a dict. The group override `data/tokenizer=bpe` gives the group's file;
    `data.tokenizer=bpe` (a plain value in Hydra's eyes) is accepted as shorthand for it."""
    if isinstance(tok, str):
        group_file = CONF_DIR / "data" / "tokenizer" / f"{tok}.yaml"
        if not group_file.exists():
            choices = sorted(p.stem for p in group_file.parent.glob("*.yaml"))
            raise UserError(f"data.tokenizer={tok!r}: no {group_file}; choose one of {choices}")
        tok = OmegaConf.load(group_file)
    return to_plain(tok)


def data_folder(data: dict[str, Any], data_dir: str | Path) -> Path:
    """One prepared folder under data_dir per dataset name × tokenizer config (`data` is a data node), so
    switching tokenizers never overwrites (or silently reuses) another tokenizer's bins. `data=text` names
    the corpus by its path too, so two corpora never prepare into (and race for) one folder, and switching
    between them does not prepare each again."""
    tok = tokenizer_config(data["tokenizer"])
    tag = "-".join(str(v) for k, v in sorted(tok.items()) if k != "kind" and not isinstance(v, (list, dict)))
    name = str(data["name"])
    if name == "text" and data.get("path"):
        path = Path(str(data["path"])).expanduser().resolve()
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
        name = "text-" + re.sub(r"[^\w.-]+", "_", path.name) + "-" + digest
    if data.get("kind") == "hf":  # a Hub name or a local path: one safe folder per dataset, config, split
        name = "hf-" + re.sub(r"[^\w.-]+", "_", "-".join(str(p) for p in (name, data["config"], data["split"]) if p))
    return Path(data_dir) / name / (tok["kind"] + (f"-{tag}" if tag else ""))


def prepare_fn(data: dict[str, Any], out: Path) -> Callable[[], Any]:
    """What fills `out` with a data node's bins: the node's own `prepare` (non-text data: f(data node,
    out dir) → meta), a `datasets` dataset (kind: hf), or a text file or folder."""
    tok, frac = data["tokenizer"], data.get("val_fraction")
    if data.get("prepare"):
        return partial(get_method(data["prepare"]), data, out)
    if data.get("kind") == "hf":
        options = {k: data[k] for k in ("config", "split", "text_column", "num_proc", "split_seed")}
        return partial(ensure_prepared_hf, data["name"], out, tok, val_fraction=frac, **options)
    return partial(ensure_prepared, data["path"], out, tok, frac)


def datamodule(*, block_size: int, seed: int, data_dir: str | Path, **data: Any) -> GPTDataModule:
    """The GPTDataModule a data node describes (conf/data/*: `_target_` this, `_partial_`, since the
    window length, seed and prepared-data root are the run's: model.block_size, seed, paths.data_dir).
    Its prepare_data() fills data_folder(...) if that is not done yet."""
    data = {**data, "tokenizer": tokenizer_config(data["tokenizer"])}
    out = data_folder(data, data_dir)
    return GPTDataModule(
        out, block_size=block_size, batch_size=data["batch_size"], val_batches=data["val_batches"],
        num_workers=data["num_workers"], seed=seed, prepare=prepare_fn(data, out),
        windows=get_method(data["windows"]) if data.get("windows") else None,
    )


def build_datamodule(cfg: DictConfig) -> GPTDataModule:
    """The run's GPTDataModule from a composed train config (or a run's saved config.yaml): its data node
    completed with model.block_size, seed and paths.data_dir. A config.yaml saved before data nodes named
    their `_target_` builds through `datamodule`."""
    node = {"_target_": f"{__name__}.datamodule", "_partial_": True, **to_plain(cfg.data)}
    return instantiate(node, _convert_="all")(block_size=cfg.model.block_size, seed=cfg.seed,
                                              data_dir=cfg.paths.data_dir)
