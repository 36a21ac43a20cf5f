"""Loading gptlab's Lightning checkpoints outside Lightning (generation, export, analysis).

Always `torch.load(weights_only=True)`: a checkpoint from the internet must never be able to
run code on load. gptlab's checkpoints hold only tensors and plain Python values, so nothing
else is needed.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from gptlab.model import GPT, GPTConfig


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"refusing to load {path}: it holds Python objects other than tensors and plain values, "
            f"which could run code when unpickled (weights_only=True rejected it: {str(e).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupt?): {e}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a gptlab Lightning checkpoint (no 'state_dict' entry)")
    return ckpt


def gpt_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The GPT's own keys: drop the LightningModule's "model." and torch.compile's "_orig_mod."."""
    out = {}
    for key, value in state_dict.items():
        parts = [p for p in key.split(".") if p != "_orig_mod"]
        if parts and parts[0] == "model":
            out[".".join(parts[1:])] = value
    return out


def load_gpt_from_lightning_ckpt(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[GPT, dict[str, Any]]:
    """The GPT stored in a gptlab checkpoint, and the checkpoint dict (tokenizer, hparams, ...)."""
    ckpt = load_checkpoint(path, map_location)
    try:
        config = GPTConfig.from_dict(ckpt["hyper_parameters"]["model"])
    except (KeyError, TypeError):
        raise ValueError(f"{path} has no model config at hyper_parameters.model: not a gptlab checkpoint") from None
    model = GPT(config)
    try:
        model.load_state_dict(gpt_state_dict(ckpt["state_dict"]))
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match the stored model config {config}: {e}") from None
    return model, ckpt
