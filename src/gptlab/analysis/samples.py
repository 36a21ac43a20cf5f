"""Samples from a trained model: a temperature sweep and one sample per decoding strategy.

Each strategy is a name and the keyword arguments of `GPT.generate`, so a new strategy is one more
line in STRATEGIES (or in conf/analyze.yaml's `strategies`).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gptlab.analysis import save_figure
from gptlab.generation import Decoding, generate_text  # noqa: E402
from gptlab.model import GPT  # noqa: E402
from gptlab.tokenizers import Tokenizer  # noqa: E402

TEMPERATURES = (0.5, 0.8, 1.0, 1.2)
STRATEGIES: dict[str, dict[str, Any]] = {  # the presets of conf/decoding
    "greedy": {"strategy": "greedy"},
    "temperature 0.8": {"strategy": "sample", "temperature": 0.8},
    "top-k 200, temperature 0.8": {"strategy": "sample", "temperature": 0.8, "top_k": 200},
    "top-p 0.9, temperature 1.0": {"strategy": "sample", "temperature": 1.0, "top_p": 0.9},
    "beam search, 4 beams": {"strategy": "beam", "num_beams": 4},
}
WORD = re.compile(r"[A-Za-z']+")


def temperature_samples(model: GPT, tok: Tokenizer, prompt: str, max_new_tokens: int,
                        temperatures: Iterable[float] = TEMPERATURES, seed: int = 1337) -> dict[str, str]:
    return {f"temperature {t}": prompt + generate_text(model, tok, prompt, Decoding(
        strategy="sample", temperature=t, max_new_tokens=max_new_tokens, seed=seed)) for t in temperatures}


def strategy_samples(model: GPT, tok: Tokenizer, prompt: str, max_new_tokens: int,
                     strategies: dict[str, dict[str, Any]] | None = None, seed: int = 1337) -> dict[str, str]:
    return {name: prompt + generate_text(model, tok, prompt, Decoding.from_dict(
        {**kw, "max_new_tokens": max_new_tokens, "seed": seed})) for name, kw in (strategies or STRATEGIES).items()}


def text_stats(text: str, known_words: set[str] | None = None) -> dict[str, float]:
    """Two quick quality signals: the share of distinct 4-grams of characters (low = repetitive loops)
    and, given the training text's words, the share of generated words that are real words."""
    grams = [text[i:i + 4] for i in range(len(text) - 3)]
    stats = {"distinct 4-grams": len(set(grams)) / max(1, len(grams))}
    if known_words is not None:
        words = WORD.findall(text)
        stats["known words"] = sum(w.lower() in known_words for w in words) / max(1, len(words))
    return stats


def vocabulary(text: str) -> set[str]:
    """The lower-cased words of a text (for `text_stats`)."""
    return {w.lower() for w in WORD.findall(text)}


def plot_sample_grid(samples: dict[str, str], path: str | Path, title: str, width: int = 64,
                     max_lines: int = 18) -> Path:
    """The samples side by side in a 2-column grid of monospace text panels."""
    n = len(samples)
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    wrapped = {name: [w for line in text.splitlines() for w in (textwrap.wrap(line, width) or [""])][:max_lines]
               for name, text in samples.items()}
    tallest = max(len(lines) for lines in wrapped.values())
    fig, axes = plt.subplots(rows, cols, figsize=(8 * cols, (0.7 + 0.2 * tallest) * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, lines) in zip(axes.flat, wrapped.items()):
        ax.text(0.0, 1.0, "\n".join(lines), family="monospace", fontsize=10, va="top", ha="left",
                transform=ax.transAxes)
        ax.set_title(name, fontsize=11, loc="left", fontweight="bold")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
