"""What every entry point shares: its Hydra decorator (configs read from the package, the same
resolvers registered), the OmegaConf resolvers used by conf/, and to_plain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import OmegaConf

from gptlab.data.build import to_plain  # noqa: F401  (the entry points' import of it)
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


def hydra_entry(config_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`@hydra_entry("train") def main(cfg)`: a Hydra CLI over conf/<config_name>.yaml, read from the
    installed package (pkg://gptlab.conf), so it runs from any folder; the resolvers are registered first."""
    register_resolvers()
    return hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name=config_name)


register_resolvers()
