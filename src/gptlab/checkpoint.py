"""Reading and writing gptlab's Lightning checkpoints safely (generation, export, resume).

The LightningModule keeps the network as `self.model` and saves the GPTConfig dict as the
hyper-parameter `model`, so a `.ckpt` alone rebuilds the GPT: `state_dict` keys are
`model.<GPT key>` (plus `_orig_mod.` if the model was torch.compile'd elsewhere, or `module.`
if a DDP wrapper was saved by hand).

Always `torch.load(weights_only=True)`: a checkpoint from the internet must never be able to
run code on load. gptlab's checkpoints hold only tensors and plain Python values.
Writes go to a temporary file in the same folder, are fsync'ed, then renamed into place, so
a crash or kill at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch

from gptlab.errors import MissingFile, UserError
from gptlab.model import GPT, GPTConfig

# GPTConfig fields a run may change when resuming; any other difference is another model
RESUMABLE_CHANGES = ("dropout", "use_sdpa")


def safe_torch_load(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """torch.load(weights_only=True), with errors that say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(
            f"checkpoint {path} not found" + (" (it is a folder)" if path.is_dir() else "")
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch words this differently across versions
        if unsafe:
            torch_says = next(line for line in str(e).splitlines() if "GLOBAL" in line)
            raise UserError(
                f"refusing to load {path}: it holds a Python object ({unsafe.group(1)}) that could run code "
                f"when unpickled, and torch.load(weights_only=True) rejected it "
                f"({torch_says.split('WeightsUnpickler error:')[-1].strip()}). gptlab checkpoints hold "
                f"tensors and plain containers only (e.g. OmegaConf.to_container for configs)"
            ) from None
        reason = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise UserError(f"{path} is not a readable PyTorch checkpoint (corrupt?): {reason}") from None
    except Exception as e:  # torch raises KeyError, EOFError, RuntimeError... for damaged files
        raise UserError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from None


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """The checkpoint dict, read with torch.load(weights_only=True): tensors and plain containers only.
    mmap=True maps the tensors instead of reading them (cheap checks of big files)."""
    ckpt = safe_torch_load(path, map_location, mmap)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path} is not a Lightning checkpoint: no 'state_dict' (found {found})")
    return ckpt


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to `path` so that a crash, kill or full disk never leaves a partial file there:
    write a temporary file in the same folder, fsync it, os.replace it into place, fsync the folder."""
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"  # hidden, and no *.ckpt glob matches it
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):  # torch's zip writer reports a full disk as RuntimeError
            free = shutil.disk_usage(folder).free / 2**20
            raise OSError(
                f"could not write checkpoint {path} ({type(e).__name__}: {e}); {free:,.0f} MiB free in {folder}. "
                f"The previous {path.name}, if any, is intact"
            ) from e
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def check_writable(folder: str | Path, need_bytes: int = 0) -> None:
    """Create `folder` and prove a file can be written there with `need_bytes` to spare, so a
    read-only or full output folder stops a run at its start rather than at its first checkpoint."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(
            f"output folder {folder} is not writable ({e.strerror or e}); choose another with "
            f"hydra.run.dir=... (python train.py) or paths.run_dir=..."
        ) from None
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise OSError(
            f"output folder {folder} has {free / 2**20:,.0f} MiB free, less than one checkpoint of this "
            f"model ({need_bytes / 2**20:,.0f} MiB); free some space or choose another folder"
        )


def strip_wrapper_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """State-dict keys without torch.compile's `_orig_mod.` or a DDP/DataParallel `module.` prefix,
    so compiled, uncompiled, DDP and single-device checkpoints all load into a plain module."""
    return {k.removeprefix("module.").replace("_orig_mod.", ""): v for k, v in state.items()}


def check_resumable(path: str | Path, model: dict[str, Any]) -> None:
    """Fail before training when `path` cannot resume a run of `model` (a GPTConfig dict):
    unreadable, unsafe, or saved from a model of another shape."""
    ckpt = load_checkpoint(path, mmap=True)
    saved = (ckpt.get("hyper_parameters") or {}).get("model")
    if not isinstance(saved, dict):
        raise UserError(
            f"{path}: no hyper_parameters['model'] (the GPTConfig dict): not a gptlab training checkpoint"
        )
    # through GPTConfig, so a field added to it since the checkpoint was saved counts as its default
    then, now = GPTConfig.from_dict(saved).to_dict(), GPTConfig.from_dict(model).to_dict()
    differ = {k: (then[k], v) for k, v in now.items() if k not in RESUMABLE_CHANGES and then[k] != v}
    if differ:
        listing = ", ".join(f"{k}={a!r} there but {b!r} here" for k, (a, b) in sorted(differ.items()))
        raise UserError(
            f"{path} was trained with another model ({listing}); resume with the same model settings "
            f"(the run's config.yaml beside its checkpoints lists them) or start fresh with ckpt_path=null"
        )


def gpt_from_checkpoint(ckpt: dict[str, Any], source: str | Path = "checkpoint") -> GPT:
    """The GPT held by a loaded checkpoint dict, in eval mode, with the config it was trained with."""
    hparams = ckpt.get("hyper_parameters") or {}
    if not isinstance(hparams.get("model"), dict):
        raise UserError(
            f"{source}: hyper_parameters['model'] (the GPTConfig dict) is missing; "
            f"hyper_parameters has keys {sorted(hparams)}: not a gptlab checkpoint"
        )
    config = GPTConfig.from_dict(hparams["model"])
    state = {}
    for key, tensor in strip_wrapper_prefixes(ckpt["state_dict"]).items():
        if key.startswith("model."):
            state[key.removeprefix("model.")] = tensor
    if not state:
        raise UserError(
            f"{source}: no 'model.*' weights in state_dict (keys start {sorted(ckpt['state_dict'])[:5]})"
        )
    model = GPT(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(
            f"{source}: the weights do not fit hyper_parameters['model'] = {hparams['model']}: {e}"
        ) from None
    return model.eval()


def load_gpt_from_lightning_ckpt(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[GPT, dict[str, Any]]:
    """The GPT stored in a gptlab checkpoint, and the checkpoint dict (tokenizer, hparams, ...)."""
    ckpt = load_checkpoint(path, map_location)
    return gpt_from_checkpoint(ckpt, path).to(map_location), ckpt
