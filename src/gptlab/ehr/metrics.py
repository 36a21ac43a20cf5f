"""Discrimination and calibration of risk scores: AUROC, AUPRC, bootstrap CIs, calibration bins."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _check(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, score = np.asarray(y, dtype=bool), np.asarray(score, dtype=np.float64)
    if y.shape != score.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {score.shape} must be 1-D of the same length")
    if not np.isfinite(score).all():
        raise ValueError("scores contain NaN or infinity")
    return y, score


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(y, score) -> float:
    """P(score of a random positive > a random negative), ties counting one half (Mann-Whitney U)."""
    y, score = _check(y, score)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    u = _ranks(score)[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def auprc(y, score) -> float:
    """Average precision: Σ over distinct thresholds (high → low) of Δrecall × precision."""
    y, score = _check(y, score)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    ys, ss = y[order], score[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]  # include all ties at a threshold
    tp = np.cumsum(ys)[last_of_group]
    precision = tp / (last_of_group + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def bootstrap_ci(metric, y, score, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 groups=None) -> tuple[float, float]:
    """Percentile interval of `metric` over resamples with replacement; resamples that miss a class
    are skipped (and redrawn), as the metric is undefined there.

    With `groups` (e.g. the patient of each prediction) whole groups are resampled, all of a drawn
    group's rows together: a patient's predictions are correlated, so resampling rows would treat
    them as independent and give too narrow an interval."""
    y, score = _check(y, score)
    if y.all() or not y.any():
        return float("nan"), float("nan")
    if groups is None:
        groups = np.arange(len(y))
    groups = np.asarray(groups)
    if groups.shape != y.shape:
        raise ValueError(f"groups {groups.shape} must have one entry per prediction {y.shape}")
    order = np.argsort(groups, kind="mergesort")
    starts = np.r_[0, np.flatnonzero(np.diff(groups[order]) != 0) + 1]
    sizes = np.diff(np.r_[starts, len(y)])
    rng = np.random.default_rng(seed)
    values = []
    while len(values) < n_boot:
        g = rng.integers(0, len(starts), len(starts))
        # rows of the drawn groups: each group's run start .. start + size in `order`
        offsets = np.arange(sizes[g].sum()) - np.repeat(np.cumsum(sizes[g]) - sizes[g], sizes[g])
        i = order[np.repeat(starts[g], sizes[g]) + offsets]
        if y[i].any() and not y[i].all():
            values.append(metric(y[i], score[i]))
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_difference(metric, y, a, b, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                      groups=None) -> dict[str, float | list[float]]:
    """metric(y, a) − metric(y, b) and its percentile CI, both scores on the SAME resample of
    `groups` (patients) each time: the CI of a difference of correlated scores, far narrower (and
    honest) than comparing two separate intervals."""
    y, a = _check(y, a)
    _, b = _check(y, b)
    idx = np.arange(len(y), dtype=np.float64)
    diff = lambda yy, i: metric(yy, a[i.astype(int)]) - metric(yy, b[i.astype(int)])  # noqa: E731
    lo, hi = bootstrap_ci(diff, y, idx, n_boot, seed, level, groups=groups)
    return {"difference": metric(y, a) - metric(y, b), "ci": [lo, hi]}


def calibration_bins(y, score, n_bins: int = 10) -> list[dict[str, float]]:
    """Equal-count bins of the score: mean predicted vs observed rate and count per bin."""
    y, score = _check(y, score)
    order = np.argsort(score, kind="mergesort")
    out = []
    for chunk in np.array_split(order, min(n_bins, len(order))):
        if len(chunk):
            out.append({"predicted": float(score[chunk].mean()), "observed": float(y[chunk].mean()),
                        "n": int(len(chunk))})
    return out


def summarize(y, score, n_boot: int = 1000, seed: int = 0, groups=None) -> dict[str, float]:
    """AUROC and AUPRC with bootstrap CIs (resampling `groups`, e.g. patients, when given)."""
    y, score = _check(y, score)
    lo, hi = bootstrap_ci(auroc, y, score, n_boot, seed, groups=groups)
    plo, phi = bootstrap_ci(auprc, y, score, n_boot, seed, groups=groups)
    return {"auroc": auroc(y, score), "auroc_ci": [lo, hi], "auprc": auprc(y, score), "auprc_ci": [plo, phi],
            "n": int(len(y)), "positives": int(y.sum()), "prevalence": float(y.mean()) if len(y) else float("nan")}


def calibration_plot(path: str | Path, y, scores: dict[str, np.ndarray], title: str, n_bins: int = 10) -> None:
    """Reliability diagram: one line per scorer (mean predicted vs observed, equal-count bins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = 0.0
    for name, s in scores.items():
        bins = calibration_bins(y, s, n_bins)
        xs, ys = [b["predicted"] for b in bins], [b["observed"] for b in bins]
        top = max(top, *xs, *ys)
        ax.plot(xs, ys, marker="o", label=name)
    top = min(1.0, top * 1.05 + 0.02)
    ax.plot([0, top], [0, top], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="mean predicted risk (bin)", ylabel="observed rate (bin)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
