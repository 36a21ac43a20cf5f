"""What every entry point shares: its Hydra decorator (configs read from the package, the same
resolvers registered), the OmegaConf resolvers used by conf/, and to_plain."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import OmegaConf

from gptlab.cfg import to_plain  # noqa: F401  (the entry points' import of it)
from gptlab.entrypoints.argv import quote_free_text
from gptlab.errors import user_errors
from gptlab.paths import asset


def _asset(relative: str) -> str:
    return str(asset(relative))


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


def _options(package: str, group: str) -> str:
    """The options of a config group in a package's config folder, e.g. ${options:gptlab.conf_generate,decoding}
    for generate's --help (Hydra's help lists only the groups of the primary config folder)."""
    from importlib.resources import files

    return ", ".join(sorted(p.name.removesuffix(".yaml") for p in files(package).joinpath(group).iterdir()
                            if p.name.endswith(".yaml")))


def register_resolvers() -> None:
    for name, fn in (("asset", _asset), ("eval", _eval), ("slug", _slug), ("options", _options)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def hydra_entry(config_name: str, free_text: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`@hydra_entry("train") def main(cfg)`: a Hydra CLI over conf/<config_name>.yaml, read from the
    installed package (pkg://gptlab.conf), so it runs from any folder; the resolvers are registered first.
    A UserError prints as `error: <message>` with exit status 2 (gptlab.errors); the `free_text` keys
    (e.g. prompt) take what the shell passes verbatim (gptlab.entrypoints.argv)."""
    register_resolvers()

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        cli = hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name=config_name)(
            user_errors(fn))

        @functools.wraps(fn)
        def main(*args: Any, **kwargs: Any) -> Any:
            if free_text and not args and not kwargs:  # a command line, not a call with a config
                sys.argv = quote_free_text(sys.argv, free_text)
            return cli(*args, **kwargs)

        return main

    return decorate


register_resolvers()


def compose_train(run_dir: str | Path, data_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """The config `python train.py <overrides>` would see, with its run and prepared-data folders set,
    for code that calls `train()` in-process (tests, experiment drivers). HydraConfig is set as
    under @hydra.main, so `${hydra:...}` interpolations resolve."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from gptlab.conf import CONF_DIR

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.run_dir={run_dir}", f"paths.data_dir={data_dir}", *overrides],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
