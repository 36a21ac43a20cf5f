"""Plain views of Hydra/OmegaConf config nodes (a leaf module: entry points import it before
anything heavy, and checkpoints must hold no OmegaConf objects)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def to_plain(cfg: Any) -> Any:
    """A resolved plain dict/list (checkpoints must hold no OmegaConf objects: weights_only loading)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_list(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
