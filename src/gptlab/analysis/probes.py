"""What the model learned, measured directly: loss by position in the context window, and which
tokens the embedding table puts next to each other."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from gptlab.analysis import save_figure
from gptlab.analysis.attention import show_token  # noqa: E402
from gptlab.data.datamodule import FixedWindows  # noqa: E402
from gptlab.model import GPT  # noqa: E402
from gptlab.tokenizers import Tokenizer  # noqa: E402


@torch.no_grad()
def per_position_loss(model: GPT, ids: np.ndarray, batch_size: int = 32, num_batches: int = 50) -> np.ndarray:
    """Mean next-token cross-entropy (nats) at each position 0..block_size-1 of the window.

    Averaged over batch_size × num_batches evenly spaced validation windows (FixedWindows): each
    window gives one prediction per position, so this takes more windows than training's validation.
    Position t predicts token t+1 from t+1 tokens of context, so a causal model's curve shows how much
    a longer context helps; a bidirectional one can read its target at every position but the last.
    """
    device = next(model.parameters()).device
    windows = FixedWindows(ids, model.config.block_size, batch_size, num_batches)
    total = torch.zeros(model.config.block_size, dtype=torch.float64)
    for k in range(len(windows)):
        x, y = windows[k]
        logits, _ = model(x.to(device))
        loss = F.cross_entropy(logits.transpose(1, 2).float(), y.to(device), reduction="none")  # (B, T)
        total += loss.sum(0).double().cpu()
    return (total / (len(windows) * batch_size)).numpy()


def plot_position_loss(curves: dict[str, np.ndarray], path: str | Path, title: str) -> Path:
    """Validation loss against context length (tokens the prediction could see), one line per model."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, loss in curves.items():
        ax.plot(np.arange(1, len(loss) + 1), loss, "o-", markersize=2.5, linewidth=1.2, label=label)
    ax.set(xlabel="context length: tokens before the predicted one", ylabel="validation loss (nats/token)",
           title=title)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def token_counts(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    return np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab_size)[:vocab_size]


def nearest_neighbours(model: GPT, queries: list[int], k: int = 5,
                       vocab_size: int | None = None) -> list[tuple[int, list[tuple[int, float]]]]:
    """For each query id, the k other tokens with the most similar embeddings (cosine similarity).

    The table is tied to the output layer, so neighbours are tokens the model treats as
    interchangeable both as input and as prediction. vocab_size limits candidates to real
    tokens (an MLM run's [MASK] row and padding rows are left out).
    """
    vocab_size = vocab_size or model.config.vocab_size
    emb = F.normalize(model.transformer.wte.weight[:vocab_size].detach().float(), dim=-1)
    sims = emb[queries] @ emb.T  # (Q, V)
    sims[torch.arange(len(queries)), torch.tensor(queries)] = float("-inf")  # not itself
    top = sims.topk(min(k, vocab_size - 1), dim=-1)
    return [(q, [(int(i), float(s)) for i, s in zip(idx, val)]) for q, idx, val in
            zip(queries, top.indices.tolist(), top.values.tolist())]


def plot_embedding_pca(model: GPT, tok: Tokenizer, token_ids: list[int], path: str | Path, title: str) -> Path:
    """The chosen tokens' embeddings projected on their first two principal components, labelled."""
    emb = model.transformer.wte.weight[token_ids].detach().float()
    centred = emb - emb.mean(0)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    xy = (centred @ v[:2].T).numpy()
    explained = (s[:2] ** 2 / (s**2).sum()).tolist()
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.scatter(xy[:, 0], xy[:, 1], s=12, alpha=0.4)
    for (x, y), i in zip(xy, token_ids):
        ax.annotate(show_token(tok.decode([i])), (x, y), fontsize=9, family="monospace", ha="center", va="bottom")
    ax.set(xlabel=f"principal component 1 ({explained[0]:.0%} of variance)",
           ylabel=f"principal component 2 ({explained[1]:.0%} of variance)", title=title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
