"""OmegaConf resolvers used by conf/, and small helpers to turn configs into plain values."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def _asset(relative: str) -> str:
    return str(ASSETS / relative)


def _eval(expr: str) -> Any:
    # arithmetic between config values, e.g. ${eval:'${eval_interval} * ${trainer.accumulate_grad_batches}'}
    return eval(expr, {"__builtins__": {}}, {})


def _slug(name: Any) -> str:
    """One folder name for a dataset name: a path's last part (`/data/docs.jsonl` → `docs.jsonl`), a
    Hub name's slash as `_` (`stas/openwebtext-10k` → `stas_openwebtext-10k`), nothing else but
    letters, digits and `._-`; so that outputs/<run_name>/ is one folder, never a nested path."""
    text = str(name)
    if text.startswith(("/", "~", ".")) or "\\" in text:
        text = Path(text.rstrip("/\\")).name or text
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "data"


def register_resolvers() -> None:
    for name, fn in (("asset", _asset), ("eval", _eval), ("slug", _slug)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def to_plain(cfg: Any) -> Any:
    """A resolved plain dict/list (checkpoints must hold no OmegaConf objects: weights_only loading)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_list(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


register_resolvers()
