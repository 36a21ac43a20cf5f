"""Model flops utilisation (MFU): the share of a device's peak flop/s that training actually uses.

Flops per token follow nanoGPT (PaLM paper, appendix B): 6N for the forward and backward matmuls
of N parameters, plus 12·L·H·Q·T for attention's two matmuls (QKᵀ and A·V) over a context of T.
"""

from __future__ import annotations

import re

import torch

from gptlab.model import GPTConfig

# Peak dense (no sparsity) tensor-core flop/s from NVIDIA's datasheets. "fp32" is the plain FP32
# rate; with TF32 matmuls enabled (torch.set_float32_matmul_precision("high")) an fp32 run can
# exceed it, so pass `peak_flops` explicitly in that case.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "a100": {"bf16": 312e12, "fp32": 19.5e12},
    "h100-sxm": {"bf16": 989e12, "fp32": 67e12},
    "h100-pcie": {"bf16": 756e12, "fp32": 51e12},
    "h100-nvl": {"bf16": 835e12, "fp32": 60e12},
    "h200": {"bf16": 989e12, "fp32": 67e12},
    "l4": {"bf16": 121e12, "fp32": 30.3e12},
    "rtx4090": {"bf16": 165.2e12, "fp32": 82.6e12},
    "rtx3090": {"bf16": 71e12, "fp32": 35.6e12},
}
# nanoGPT measures MFU against an A100's bf16 peak; unknown devices (and CPUs) use it too.
DEFAULT_PEAK_FLOPS = PEAK_FLOPS["a100"]["bf16"]
# torch.cuda.get_device_name() → table key; first match wins ("NVIDIA H100 80GB HBM3" is the SXM part)
_DEVICE_PATTERNS = [
    (r"h100.*pcie", "h100-pcie"),
    (r"h100.*nvl", "h100-nvl"),
    (r"h100", "h100-sxm"),
    (r"h200", "h200"),
    (r"a100", "a100"),
    (r"\bl4\b", "l4"),
    (r"4090", "rtx4090"),
    (r"3090", "rtx3090"),
]


def flops_per_token(config: GPTConfig, num_params: int, seq_len: int | None = None) -> float:
    """Training flops (forward + backward) per token: 6N + 12·L·H·Q·T, with T = block_size by default.

    N is nanoGPT's count: `model.num_params(non_embedding=True)` (the tied token table stays in, as
    the output layer; the position table, a lookup, does not)."""
    L, H, Q = config.n_layer, config.n_head, config.n_embd // config.n_head
    T = seq_len or config.block_size
    return 6 * num_params + 12 * L * H * Q * T


def estimate_mfu(
    config: GPTConfig,
    num_params: int,
    tokens_per_second: float,
    peak_flops: float,
    seq_len: int | None = None,
) -> float:
    """Achieved flop/s over peak flop/s (0.0 to 1.0) for training at tokens_per_second (per device)."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be positive, got {peak_flops}")
    return flops_per_token(config, num_params, seq_len) * tokens_per_second / peak_flops


def device_peak_flops(
    device_name: str | None = None, precision: str = "bf16", default: float = DEFAULT_PEAK_FLOPS
) -> float:
    """Peak flop/s of a GPU from its name or table key (None: the current CUDA device), else `default`.

    precision takes Lightning's strings too: anything with "16" ("bf16-mixed", "16-mixed") uses the
    tensor-core rate (fp16 equals bf16 on these GPUs); the rest ("32-true") the FP32 rate.
    """
    if device_name is None:
        if not torch.cuda.is_available():
            return default
        device_name = torch.cuda.get_device_name()
    name = device_name.lower()
    key = name if name in PEAK_FLOPS else next((k for p, k in _DEVICE_PATTERNS if re.search(p, name)), None)
    if key is None:
        return default
    return PEAK_FLOPS[key]["bf16" if "16" in str(precision) else "fp32"]
