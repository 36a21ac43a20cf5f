"""Loading gptlab's Lightning checkpoints outside Lightning (generation, export, analysis).

The LightningModule keeps the network as `self.model` and saves the GPTConfig dict as the
hyper-parameter `model`, so a `.ckpt` alone rebuilds the GPT: `state_dict` keys are
`model.<GPT key>` (plus `_orig_mod.` if the model was torch.compile'd elsewhere).

Always `torch.load(weights_only=True)`: a checkpoint from the internet must never be able to
run code on load. gptlab's checkpoints hold only tensors and plain Python values.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from gptlab.model import GPT, GPTConfig


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict, read with torch.load(weights_only=True): tensors and plain containers only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        if "Unsupported global" in reason:
            raise ValueError(
                f"refusing to load {path}: it holds Python objects that could run code when unpickled, "
                f"and torch.load(weights_only=True) rejected them ({reason}). gptlab checkpoints hold "
                f"plain dicts only (e.g. OmegaConf.to_container for configs)"
            ) from None
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (corrupt?): {reason}") from None
    except Exception as e:  # torch raises KeyError, EOFError, RuntimeError... for damaged files
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a Lightning checkpoint: no 'state_dict' (found {found})")
    return ckpt


def gpt_from_checkpoint(ckpt: dict[str, Any], source: str | Path = "checkpoint") -> GPT:
    """The GPT held by a loaded checkpoint dict, in eval mode, with the config it was trained with."""
    hparams = ckpt.get("hyper_parameters") or {}
    if not isinstance(hparams.get("model"), dict):
        raise ValueError(
            f"{source}: hyper_parameters['model'] (the GPTConfig dict) is missing; "
            f"hyper_parameters has keys {sorted(hparams)}: not a gptlab checkpoint"
        )
    config = GPTConfig.from_dict(hparams["model"])
    state = {}
    for key, tensor in ckpt["state_dict"].items():
        if key.startswith("model."):
            state[key.removeprefix("model.").replace("_orig_mod.", "")] = tensor
    if not state:
        raise ValueError(f"{source}: no 'model.*' weights in state_dict (keys start {sorted(ckpt['state_dict'])[:5]})")
    model = GPT(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{source}: the weights do not fit hyper_parameters['model'] = {hparams['model']}: {e}") from None
    return model.eval()


def load_gpt_from_lightning_ckpt(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[GPT, dict[str, Any]]:
    """The GPT stored in a gptlab checkpoint, and the checkpoint dict (tokenizer, hparams, ...)."""
    ckpt = load_checkpoint(path, map_location)
    return gpt_from_checkpoint(ckpt, path).to(map_location), ckpt
