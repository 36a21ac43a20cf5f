"""Analyses of runs, vocabularies and models."""

from pathlib import Path


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Write a matplotlib figure to `path` and close it (pyplot keeps every open figure alive)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
