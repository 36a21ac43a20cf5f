"""Checks before a run starts: the checkpoint to resume exists, the accelerator asked for is there,
and the run's memory fits the machine.

A run that does not fit is otherwise killed minutes in by the kernel's OOM killer (`Child process
... terminated with code -9`, nothing else); a run on GPUs that are not there fails deep inside
Lightning. Both stop here instead, in a second, with one paragraph: the estimate and what to do.

The estimate per process: 0.4 GiB for the runtime, weights + gradients + AdamW's two moments (16 bytes a parameter in fp32,
divided among the processes under FSDP), plus the activations kept for the backward pass at
data.batch_size × model.block_size (about 17 values of n_embd per token per layer with fused
attention, as in Korthikanti et al. 2022; plus the T×T attention scores without it), plus the
logits and their gradient. CPU processes share the machine's RAM (each holds a full copy); each GPU
process has its own device memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptlab.errors import UserError

GiB = 1024**3
# vocabulary sizes when model.vocab_size is null (taken from the data, which is not prepared yet)
VOCAB_GUESS = {"char": 256, "tiktoken": 50257, "ehr": 8192}
RUNTIME = 400 * 2**20  # a process's own share: Python, torch (~300 MB resident once imported), Lightning


@dataclass
class Machine:
    """What the run can use: visible CUDA devices (each one's memory in bytes) and free RAM."""

    gpu_bytes: list[int] = field(default_factory=list)
    ram_available: int = 0

    @classmethod
    def probe(cls) -> Machine:
        import torch

        gpus = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())] \
            if torch.cuda.is_available() else []
        return cls(gpu_bytes=gpus, ram_available=available_ram())


def available_ram() -> int:
    """Bytes the kernel can give a new process: MemAvailable, capped by a cgroup v2 memory limit.
    GPTLAB_RAM_AVAILABLE=<bytes> replaces the probe (to plan a run for another machine, or in tests)."""
    if os.environ.get("GPTLAB_RAM_AVAILABLE"):
        return int(os.environ["GPTLAB_RAM_AVAILABLE"])
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def vocab_size(cfg: Any) -> int:
    model, tok = cfg.model, cfg.data.get("tokenizer")
    if model.get("vocab_size"):
        v = int(model.vocab_size)
    else:
        kind = tok if isinstance(tok, str) else (tok or {}).get("kind", "char")
        v = int(tok.get("vocab_size", 4096)) if kind == "bpe" and not isinstance(tok, str) else VOCAB_GUESS.get(kind, 4096)
    m = int(model.get("vocab_multiple") or 1)
    return (v + m - 1) // m * m


def estimate(cfg: Any, processes: int = 1) -> dict[str, float]:
    """Bytes per process: parameters, their training state, activations, logits."""
    m, t = cfg.model, cfg.trainer
    h, n_layer, n_head, block = int(m.n_embd), int(m.n_layer), int(m.n_head), int(m.block_size)
    V, B = vocab_size(cfg), int(cfg.data.batch_size)
    params = V * h + block * h + n_layer * (12 * h * h + 13 * h) + 2 * h
    precision = str(t.get("precision", "32-true"))
    half = "16" in precision
    state = (8 if half and precision.endswith("true") else 16) * params
    if "fsdp" in str(t.get("strategy", "")).lower():
        state /= processes
    act_bytes = 2 if half else 4
    per_layer = 17 * h + (0 if m.get("use_sdpa", True) else 3 * n_head * block)
    activations = B * block * (n_layer * per_layer + 4 * h) * act_bytes
    logits = 3 * B * block * V * 4  # logits, their log-softmax and its gradient, in fp32
    return {"params": params, "state": state, "activations": activations, "logits": logits,
            "total": state + activations + logits + RUNTIME}


def count_devices(devices: Any, gpus: int) -> int:
    """Local processes Lightning will start for trainer.devices (int, -1/"auto", list or "0,1")."""
    if isinstance(devices, str):
        if devices in ("auto", "-1"):
            return max(gpus, 1)
        return len([d for d in devices.split(",") if d.strip()]) if "," in devices else int(devices)
    if isinstance(devices, int):
        return max(gpus, 1) if devices == -1 else devices
    return len(list(devices))


def check_accelerator(cfg: Any, machine: Machine) -> tuple[bool, int]:
    """(on GPU, local processes); a UserError when GPUs are asked for and absent or too few."""
    t = cfg.trainer
    acc, gpus = str(t.get("accelerator", "auto")), len(machine.gpu_bytes)
    if acc in ("gpu", "cuda") and not gpus:
        strategy = str(t.get("strategy", ""))
        what = "trainer=ddp runs one process per GPU" if strategy == "ddp" else f"trainer.accelerator={acc} needs a GPU"
        raise UserError(
            f"{what}, and this machine has none (torch.cuda.is_available() is False). For DDP over CPU "
            f"processes use trainer=ddp_cpu (e.g. trainer=ddp_cpu trainer.devices=2); for one CPU process, "
            f"trainer=cpu (or leave trainer.accelerator=auto)."
        )
    on_gpu = acc in ("gpu", "cuda") or (acc == "auto" and gpus > 0)
    n = count_devices(t.get("devices", 1), gpus if on_gpu else 0)
    if on_gpu and n > gpus:
        raise UserError(f"trainer.devices={t.get('devices')} asks for {n} GPUs and this machine has {gpus}: "
                        f"use trainer.devices={gpus} (or fewer)")
    return on_gpu, n


def check_memory(cfg: Any, machine: Machine | None = None) -> dict[str, Any]:
    """The run's memory estimate, or a UserError with the estimate and what to do when it does not fit."""
    machine = machine or Machine.probe()
    on_gpu, n = check_accelerator(cfg, machine)
    est = estimate(cfg, n)
    need = est["total"] if on_gpu else est["total"] * n
    have = min(machine.gpu_bytes) if on_gpu else machine.ram_available
    result = {**est, "processes": n, "on_gpu": on_gpu, "need": need, "have": have}
    if need > have:
        raise UserError(advice(cfg, result))
    return result


def advice(cfg: Any, r: dict[str, Any]) -> str:
    m, n, gb = cfg.model, r["processes"], lambda b: f"{b / GiB:.1f} GiB"
    where = (f"{gb(r['have'])} per GPU" if r["on_gpu"] else f"{gb(r['have'])} of RAM available")
    what = (f"{n} process{'es' if n > 1 else ''} × {gb(r['total'])}" if n > 1 else gb(r["total"]))
    parts = (f"{r['params'] / 1e6:.1f}M parameters: weights, gradients and AdamW state {gb(r['state'])}; "
             f"activations at batch {cfg.data.batch_size} × block {m.block_size} {gb(r['activations'])}; "
             f"logits {gb(r['logits'])}")
    text = f"this run needs about {gb(r['need'])} of memory and the machine has {where}: {what} ({parts})."
    if r["on_gpu"]:
        todo = ("trainer.precision=bf16-mixed (halves the activations), a smaller data.batch_size with "
                "trainer.accumulate_grad_batches to keep the tokens per step, trainer=fsdp to shard the weights "
                "and optimizer state over the GPUs, or a smaller model")
    else:
        todo = ("a smaller model (model=baby_cpu), a smaller data.batch_size or model.block_size (activations "
                "and logits scale with both; trainer.accumulate_grad_batches keeps the tokens per step)")
        if n > 1:
            text += (f" No CUDA GPU is visible, so trainer.devices={cfg.trainer.get('devices')} starts {n} CPU "
                     f"processes that each hold a full copy of the model.")
            todo = "fewer devices (trainer.devices=1, or trainer=ddp_cpu trainer.devices=2 for DDP on CPU), " + todo
        todo += ", or trainer=gpu (trainer=ddp for several GPUs) on a GPU machine"
    return f"{text} To fit: {todo}. (The estimate is gptlab.preflight's; preflight=false skips the check.)"


def check_ckpt_path(cfg: Any) -> None:
    """ckpt_path= names a file: checked before data is prepared and before the run writes anything."""
    path = cfg.get("ckpt_path")
    if path and not Path(str(path)).expanduser().is_file():
        folder = " (it is a folder)" if Path(str(path)).expanduser().is_dir() else ""
        raise UserError(f"checkpoint {path} not found{folder}: ckpt_path= takes a .ckpt file (e.g. "
                        f"outputs/<run>/<time>/checkpoints/last.ckpt); resume=auto finds the newest itself")


def run_checks(cfg: Any, machine: Machine | None = None) -> dict[str, Any] | None:
    """Every check before a run; the memory estimate, or None when preflight=false or the entry point
    trains nothing (ehr_eval, generate: no trainer and model in its config, only ckpt_path to check)."""
    check_ckpt_path(cfg)
    if cfg.get("preflight", True) is False or cfg.get("trainer") is None or cfg.get("model") is None:
        return None
    return check_memory(cfg, machine)
