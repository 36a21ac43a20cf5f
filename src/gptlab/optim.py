"""Optimizers and LR schedules, built from config (conf/optim/*.yaml: `_target_` + `_partial_`).

- `adamw(model, ...)`: AdamW over every parameter (nanoGPT's choice), matrices decayed.
- `muon(model, ...)`: torch.optim.Muon for the 2-D hidden weights, AdamW for the rest (embeddings,
  head, gains, biases), stepped together as one optimizer so Lightning's automatic optimisation,
  accumulation, clipping and checkpoints work unchanged.
- `cosine(step, ...)` / `wsd(step, ...)`: the LR at an optimizer step (warmup + cosine, nanoGPT's; or
  warmup–stable–decay, the trapezoid).

Which parameter goes to which rule is decided in one place, `split_params`.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Any

import torch

HIDDEN_PREFIX = "transformer.h."  # the transformer blocks; embeddings, final norm and head are outside


def split_params(model: torch.nn.Module, muon_params: Sequence[str] | None = None) -> dict[str, list]:
    """The one place that decides each parameter's rule: {"hidden": [...], "decay": [...], "no_decay": [...]}.

    hidden: Muon's. By default every 2-D weight inside the blocks (Muon orthogonalises a matrix update;
    embeddings and the head are lookups/readouts whose rows see sparse, per-token gradients, so they stay
    with AdamW as in modded-nanogpt). `muon_params`, fnmatch patterns over parameter names, chooses them
    instead; a pattern that matches a tensor Muon cannot take (not 2-D) is an error naming the key.
    decay / no_decay: AdamW's, ≥2-D tensors decayed; biases and norm gains not (decaying a gain pulls it
    to 0, not its neutral 1). A tied tensor is listed once.
    """
    groups: dict[str, list] = {"hidden": [], "decay": [], "no_decay": []}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if muon_params is None:
            hidden = p.dim() == 2 and name.startswith(HIDDEN_PREFIX)
        else:
            hidden = any(fnmatch.fnmatchcase(name, pattern) for pattern in muon_params)
            if hidden and p.dim() != 2:
                raise ValueError(f"optim.optimizer.muon_params={list(muon_params)} matches {name} of shape "
                                 f"{tuple(p.shape)}: Muon takes 2-D matrices only; narrow the patterns")
        groups["hidden" if hidden else "decay" if p.dim() >= 2 else "no_decay"].append(p)
    return groups


def _adamw_groups(groups: dict[str, list], weight_decay: float) -> list[dict[str, Any]]:
    return [{"params": groups["decay"], "weight_decay": weight_decay, "name": "decay"},
            {"params": groups["no_decay"], "weight_decay": 0.0, "name": "no_decay"}]


def adamw(model: torch.nn.Module, *, lr: float, betas: Sequence[float], weight_decay: float,
          fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over every parameter, matrices (hidden ones included) decayed: nanoGPT's optimizer."""
    groups = split_params(model)
    matrices = {id(p) for p in groups.pop("hidden") + groups["decay"]}
    # in the model's order, as the gradient norm for clipping sums them: the same bits as before the split
    groups["decay"] = [p for p in dict.fromkeys(model.parameters()) if id(p) in matrices]
    return torch.optim.AdamW(_adamw_groups(groups, weight_decay), lr=lr, betas=tuple(betas), fused=fused)


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon and torch.optim.AdamW stepped as one optimizer.

    param_groups are the two optimizers' own group dicts (Muon's first), so an LR scheduler, clipping
    and the non-finite guard see and set every group; state_dict holds both states under their names,
    so a checkpoint resumes each exactly.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.optimizers = {"muon": muon, "adamw": adamw}
        super().__init__([p for opt in (muon, adamw) for g in opt.param_groups for p in g["params"]], {})
        self.param_groups = muon.param_groups + adamw.param_groups

    @property
    def state(self) -> dict:  # the union of both states (read by Lightning to move tensors to a device)
        return {**self.optimizers["muon"].state, **self.optimizers["adamw"].state}

    @state.setter
    def state(self, value: dict) -> None:  # the base class's empty state: each optimizer keeps its own
        pass

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[name])
        # torch's load_state_dict gives each optimizer new group dicts: share those, or the scheduler
        # would set LRs that no optimizer reads any more
        self.param_groups = self.optimizers["muon"].param_groups + self.optimizers["adamw"].param_groups


def muon(model: torch.nn.Module, *, lr: float, betas: Sequence[float], weight_decay: float,
         muon_lr: float | None = None, momentum: float = 0.95, adjust_lr_fn: str = "match_rms_adamw",
         muon_params: Sequence[str] | None = None, fused: bool | None = None) -> MuonAdamW:
    """Muon (torch.optim.Muon) for the hidden matrices, AdamW (lr, betas) for the rest.

    muon_lr: Muon's peak LR (default: lr). adjust_lr_fn "match_rms_adamw" scales Muon's update to
    AdamW's RMS, so both can share one LR and weight decay (Moonshot's "Muon is Scalable"); "original"
    is Keller Jordan's scaling, which wants a larger muon_lr (~0.02–0.05).
    """
    groups = split_params(model, muon_params)
    if not groups["hidden"]:
        raise ValueError(f"optim.optimizer.muon_params={muon_params}: no parameter for Muon to take")
    hidden = torch.optim.Muon([{"params": groups["hidden"], "name": "hidden"}], lr=muon_lr or lr,
                              weight_decay=weight_decay, momentum=momentum, adjust_lr_fn=adjust_lr_fn)
    rest = torch.optim.AdamW(_adamw_groups(groups, weight_decay), lr=lr, betas=tuple(betas), fused=fused)
    return MuonAdamW(hidden, rest)


def cosine(step: int, *, lr: float, min_lr: float, warmup_steps: int, lr_decay_steps: int) -> float:
    """nanoGPT's schedule, per optimizer step: linear warmup, cosine decay to min_lr, then constant."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step > lr_decay_steps:
        return min_lr
    ratio = (step - warmup_steps) / max(1, lr_decay_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # goes 1 → 0
    return min_lr + coeff * (lr - min_lr)


def wsd(step: int, *, lr: float, min_lr: float, warmup_steps: int, lr_decay_steps: int,
        decay_fraction: float = 0.2) -> float:
    """Warmup–stable–decay (the trapezoid): linear warmup, lr held, then a linear decay to min_lr over
    the last `decay_fraction` of lr_decay_steps, then constant. The stable phase keeps the LR high
    where cosine has already lowered it; the short final decay collects the gain (Hägele et al. 2024)."""
    if not 0 < decay_fraction <= 1:
        raise ValueError(f"optim.schedule.decay_fraction={decay_fraction}: give a value in (0, 1]")
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    decay_start = lr_decay_steps - decay_fraction * (lr_decay_steps - warmup_steps)
    if step <= decay_start:
        return lr
    if step >= lr_decay_steps:
        return min_lr
    return lr + (min_lr - lr) * (step - decay_start) / (lr_decay_steps - decay_start)
