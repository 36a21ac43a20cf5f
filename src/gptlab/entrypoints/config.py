"""OmegaConf resolvers used by conf/, and small helpers to turn configs into plain values."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from gptlab.paths import asset


def _asset(relative: str) -> str:
    return str(asset(relative))


def _eval(expr: str) -> Any:
    # arithmetic between config values, e.g. ${eval:'${eval_interval} * ${trainer.accumulate_grad_batches}'}
    return eval(expr, {"__builtins__": {}}, {})


def register_resolvers() -> None:
    for name, fn in (("asset", _asset), ("eval", _eval)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def to_plain(cfg: Any) -> Any:
    """A resolved plain dict/list (checkpoints must hold no OmegaConf objects: weights_only loading)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_list(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


register_resolvers()
