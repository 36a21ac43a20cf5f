"""MFU arithmetic: a case small enough to check by hand, and nanoGPT's GPT-2 124M figures."""

import pytest
import torch

from gptlab.flops import DEFAULT_PEAK_FLOPS, device_peak_flops, estimate_mfu, flops_per_token
from gptlab.model import GPT, GPTConfig


def test_hand_derived_case():
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=16, vocab_size=10)
    # 6·1000 + 12·L·H·Q·T = 6000 + 12·2·2·4·16 = 6000 + 3072
    assert flops_per_token(cfg, num_params=1000) == 9072
    assert flops_per_token(cfg, num_params=1000, seq_len=8) == 6000 + 1536
    # 9072 flops/token at 1e6 tokens/s on a 9.072 TFLOP/s device is 0.1% of its peak
    assert estimate_mfu(cfg, 1000, tokens_per_second=1e6, peak_flops=9.072e12) == pytest.approx(1e-3)


def nanogpt_estimate_mfu(cfg, N, fwdbwd_per_iter, dt):
    """nanoGPT's GPT.estimate_mfu (model.py), verbatim apart from taking N and cfg as arguments."""
    L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
    flops_per_token = 6 * N + 12 * L * H * Q * T
    flops_per_fwdbwd = flops_per_token * T
    flops_per_iter = flops_per_fwdbwd * fwdbwd_per_iter
    flops_achieved = flops_per_iter * (1.0 / dt)  # per second
    flops_promised = 312e12  # A100 GPU bfloat16 peak flops is 312 TFLOPS
    return flops_achieved / flops_promised


def test_gpt2_124m_matches_nanogpt():
    cfg = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, vocab_multiple=64)
    with torch.device("meta"):
        N = GPT(cfg).num_params(non_embedding=True)
    assert N == 123_689_472  # nanoGPT prints "number of parameters: 123.69M" (vocab padded to 50304)
    per_token = flops_per_token(cfg, N)
    assert per_token == 6 * 123_689_472 + 12 * 12 * 12 * 64 * 1024 == 855_383_040
    # nanoGPT's train.py: batch 12 × 1024 tokens per forward/backward, an iteration of dt seconds
    dt = 0.25
    ours = estimate_mfu(cfg, N, tokens_per_second=12 * 1024 / dt, peak_flops=DEFAULT_PEAK_FLOPS)
    assert ours == pytest.approx(nanogpt_estimate_mfu(cfg, N, fwdbwd_per_iter=12, dt=dt))
    # 6N + 12LHQT is the exact matmul count (3 × 2 flops per multiply-add, forward + backward) up to
    # the biases and LayerNorm gains that N includes but no matmul uses
    L, C, T = 12, 768, 1024
    exact = 3 * 2 * (L * 12 * C * C + 50304 * C + L * 2 * T * C)
    assert per_token == pytest.approx(exact, rel=1e-3)


def test_device_peak_flops():
    assert device_peak_flops("NVIDIA A100-SXM4-40GB", "bf16-mixed") == 312e12
    assert device_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert device_peak_flops("NVIDIA H100 PCIe", "16-mixed") == 756e12
    assert device_peak_flops("NVIDIA A100 80GB PCIe", "32-true") == 19.5e12
    assert device_peak_flops("NVIDIA L40S") == DEFAULT_PEAK_FLOPS  # "l4" must not match L40S
    assert device_peak_flops("h200") == 989e12
    assert device_peak_flops("Some Unknown Accelerator", default=1e12) == 1e12
    with pytest.raises(ValueError, match="peak_flops"):
        estimate_mfu(GPTConfig(), 1, 1.0, peak_flops=0)
