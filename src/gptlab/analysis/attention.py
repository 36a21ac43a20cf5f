"""Attention weights for a prompt, drawn as heatmaps: every layer × head, and one head enlarged.

Weights come from the model's explicit-mask attention path (`GPT.attention_maps`). In a causal
model the upper triangle (a query looking at later keys) is exactly zero; it is drawn blank so
the mask is visible at a glance, while a bidirectional model fills the whole square.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

from gptlab.analysis import save_figure
from gptlab.errors import UserError
from gptlab.model import GPT  # noqa: E402

CMAP = plt.get_cmap("viridis").with_extremes(bad="white")  # exact zeros (masked future positions) show as blank paper
NORM = dict(gamma=0.5, vmin=0.0, vmax=1.0)  # square-root scale: diffuse heads stay visible next to sharp ones


def attention_weights(model: GPT, ids: list[int]) -> np.ndarray:
    """(n_layer, n_head, T, T) attention probabilities for one prompt; row i = query position i."""
    if not ids:
        raise UserError("attention_weights: the prompt has no tokens")
    if len(ids) > model.config.block_size:
        raise UserError(f"attention_weights: {len(ids)} tokens exceed block_size {model.config.block_size}")
    device = next(model.parameters()).device
    _, maps = model.attention_maps(torch.tensor([ids], dtype=torch.long, device=device))
    return torch.stack([m[0] for m in maps]).float().cpu().numpy()


def row_entropy(weights: np.ndarray) -> np.ndarray:
    """Mean entropy (nats) of each head's attention rows: (n_layer, n_head). Low = sharp, focused head."""
    p = np.clip(weights, 1e-12, 1.0)
    return -(weights * np.log(p)).sum(-1).mean(-1)


def sharpest_head(weights: np.ndarray) -> tuple[int, int]:
    """(layer, head) with the lowest mean row entropy: the most focused head, usually the clearest picture."""
    layer, head = np.unravel_index(np.argmin(row_entropy(weights)), weights.shape[:2])
    return int(layer), int(head)


def show_token(s: str) -> str:
    """A token as an axis label: whitespace made visible."""
    return s.replace(" ", "␣").replace("\n", "↵").replace("\t", "→") or "∅"


def _blank_zeros(w: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.masked_where(w == 0.0, w)


def plot_attention_grid(weights: np.ndarray, path: str | Path, title: str) -> Path:
    """All heads of all layers: one row per layer, one column per head, shared colour scale."""
    n_layer, n_head, T, _ = weights.shape
    size = 2.4
    fig, axes = plt.subplots(n_layer, n_head, figsize=(size * n_head + 1.2, size * n_layer + 0.9), squeeze=False)
    im = None
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer, head]
            im = ax.imshow(_blank_zeros(weights[layer, head]), cmap=CMAP, norm=PowerNorm(**NORM),
                           interpolation="nearest")
            ax.set_title(f"layer {layer} · head {head}", fontsize=9)
            ax.set_xticks([0, T - 1])
            ax.set_yticks([0, T - 1])
            ax.tick_params(labelsize=7)
            if layer == n_layer - 1:
                ax.set_xlabel("key position", fontsize=8)
            if head == 0:
                ax.set_ylabel("query position", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    cax = fig.add_axes((0.935, 0.15, 0.015, 0.7))
    fig.colorbar(im, cax=cax, label="attention weight (√ scale)")
    return save_figure(fig, path, dpi=100)


def plot_head(weights: np.ndarray, tokens: list[str], path: str | Path, title: str) -> Path:
    """One head's (T, T) map, large, with the prompt's tokens on both axes."""
    T = len(tokens)
    if weights.shape != (T, T):
        raise ValueError(f"plot_head: weights {weights.shape} do not match {T} tokens")
    side = min(max(6.0, 0.2 * T + 2.5), 16.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(_blank_zeros(weights), cmap=CMAP, norm=PowerNorm(**NORM), interpolation="nearest")
    labels = [show_token(t) for t in tokens]
    ax.set_xticks(range(T), labels, rotation=90, fontsize=8, fontfamily="monospace")
    ax.set_yticks(range(T), labels, fontsize=8, fontfamily="monospace")
    ax.set_xlabel("key (attended-to) token")
    ax.set_ylabel("query token")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="attention weight (√ scale)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
