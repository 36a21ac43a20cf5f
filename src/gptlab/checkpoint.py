"""A bare GPT out of a Lightning checkpoint, without Lightning, Hydra or the training code.

The LightningModule keeps the network as `self.model` and saves the GPTConfig dict as the
hyper-parameter `model`, so the `.ckpt` holds everything needed: `state_dict` with keys
`model.<GPT key>` (plus `_orig_mod.` where the model was torch.compile'd) and
`hyper_parameters["model"]`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from gptlab.model import GPT, GPTConfig


def load_lightning_ckpt(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict, read with torch.load(weights_only=True): tensors and plain containers only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found" + (" (it is a folder)" if path.is_dir() else "")
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        if "Unsupported global" in reason:
            raise ValueError(
                f"{path} holds objects that torch.load(weights_only=True) refuses to unpickle ({reason}); "
                "save hyper-parameters as plain dicts (e.g. OmegaConf.to_container) rather than config objects"
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


def load_gpt_from_lightning_ckpt(path: str | Path, map_location: str | torch.device = "cpu") -> GPT:
    """The GPT saved in a Lightning `.ckpt`, in eval mode, with the config it was trained with."""
    ckpt = load_lightning_ckpt(path, map_location)
    hparams = ckpt.get("hyper_parameters") or {}
    if not isinstance(hparams.get("model"), dict):
        raise ValueError(
            f"{path}: hyper_parameters['model'] (the GPTConfig dict) is missing; "
            f"hyper_parameters has keys {sorted(hparams)}"
        )
    config = GPTConfig.from_dict(hparams["model"])

    state = {}
    for key, tensor in ckpt["state_dict"].items():
        if key.startswith("model."):
            state[key.removeprefix("model.").replace("_orig_mod.", "")] = tensor
    if not state:
        raise ValueError(
            f"{path}: no 'model.*' weights in state_dict (keys start {sorted(ckpt['state_dict'])[:5]})"
        )
    model = GPT(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"{path}: the weights do not fit hyper_parameters['model'] = {hparams['model']}: {e}"
        ) from None
    return model.to(map_location).eval()
