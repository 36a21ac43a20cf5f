"""Fit L(N, D) = E + A/N^α + B/D^β to a scaling sweep (Chinchilla's approach 3), find the iso-FLOP
minima of the fit, and plot loss against FLOPs with the fitted frontier.

    .venv/bin/python experiments/scaling/fit.py [outputs/scaling] [--out experiments/scaling]

Each finished job of `python train.py hparams_search=scaling` gives one point: N = its non-embedding
parameters (nanoGPT's count, `GPT.num_params(non_embedding=True)`), D = the training tokens it saw
(steps × batch × context × accumulation), C = D × gptlab.flops.flops_per_token, L = its final val
loss. The fit minimises the Huber loss (δ = 1e-3) of log L̂ − log L over a grid of starting points
with L-BFGS, as Hoffmann et al. (2022, appendix D.2) do. Writes fit.json and loss_vs_flops.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from gptlab.flops import flops_per_token  # noqa: E402
from gptlab.model import GPT, GPTConfig  # noqa: E402

# Published fits, for comparison: Hoffmann et al. 2022 (approach 3) and Kaplan et al. 2020 (L(N) and
# L(D) alone, each with the other unbounded; their α_N and α_D play the roles of α and β).
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
KAPLAN = {"alpha": 0.076, "beta": 0.095}


def predict(params: dict[str, float], n: np.ndarray, d: np.ndarray) -> np.ndarray:
    return params["E"] + params["A"] / n ** params["alpha"] + params["B"] / d ** params["beta"]


def _objective(x: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Σ Huber_δ(log L̂ − log L) and its gradient in (a, b, e, α, β), with A = e^a, B = e^b, E = e^e."""
    a, b, e, alpha, beta = x
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    log_pred = logsumexp(terms, axis=0)
    r = log_pred - log_l
    weights = np.exp(terms - log_pred)  # ∂ log L̂ / ∂ each term (a softmax)
    dr = np.clip(r, -delta, delta)  # Huber's derivative
    grad = np.array([(dr * weights[0]).sum(), (dr * weights[1]).sum(), (dr * weights[2]).sum(),
                     -(dr * weights[0] * log_n).sum(), -(dr * weights[1] * log_d).sum()])
    return float(huber(delta, r).sum()), grad


def fit_law(n: np.ndarray, d: np.ndarray, loss: np.ndarray, delta: float = 1e-3) -> dict[str, float]:
    """Chinchilla approach 3: (E, A, B, α, β), the best of L-BFGS runs from a grid of starting points."""
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    best = None
    starts = itertools.product([0.0, 5.0, 10.0], [0.0, 5.0, 10.0], [-1.0, 0.5], [0.2, 0.6], [0.2, 0.6])
    for start in starts:
        res = minimize(_objective, np.array(start), args=(log_n, log_d, log_l, delta), method="L-BFGS-B", jac=True,
                       bounds=[(None, None), (None, None), (None, None), (1e-3, 3.0), (1e-3, 3.0)])
        if best is None or res.fun < best.fun:
            best = res
    a, b, e, alpha, beta = best.x
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": float(alpha),
            "beta": float(beta), "huber": float(best.fun)}


def size_family(cfg_model: dict, widths) -> list[tuple[int, float]]:
    """(N, FLOPs per token) of the sweep's model at each width (other keys as swept), built on meta."""
    out = []
    for width in widths:
        with torch.device("meta"):
            model = GPT(GPTConfig.from_dict({**cfg_model, "n_embd": int(width)}))
        n = model.num_params(non_embedding=True)
        out.append((n, flops_per_token(model.config, n)))
    return out


def iso_flop_minima(params: dict[str, float], family: list[tuple[int, float]], budgets) -> list[dict]:
    """For each compute budget C: the size of the family minimising the fitted L at D = C / FLOPs-per-token."""
    n = np.array([f[0] for f in family], dtype=float)
    fpt = np.array([f[1] for f in family], dtype=float)
    rows = []
    for c in budgets:
        d = c / fpt
        losses = predict(params, n, d)
        i = int(np.argmin(losses))
        rows.append({"flops": float(c), "N_opt": float(n[i]), "D_opt": float(d[i]), "loss": float(losses[i]),
                     "at_family_edge": i in (0, len(n) - 1)})
    return rows


def load_points(sweep_dir: Path) -> tuple[list[dict], dict | None]:
    """One point per finished job under sweep_dir, and the model config (its logged hparams) of the last."""
    points, model_cfg = [], None
    for job in sorted(p for p in sweep_dir.iterdir() if (p / "result.json").exists()):
        result = json.loads((job / "result.json").read_text())
        cfg = OmegaConf.load(job / "config.yaml")
        if result.get("final_val_loss") is None or result["steps"] != cfg.trainer.max_steps:
            continue  # unfinished, or stopped early: not the point its budget names
        model_cfg = dict(OmegaConf.to_container(OmegaConf.load(job / "logs" / "hparams.yaml").model))
        model_cfg.pop("compile", None)
        (n, fpt), = size_family(model_cfg, [model_cfg["n_embd"]])
        d = cfg.trainer.max_steps * cfg.data.batch_size * cfg.model.block_size * cfg.trainer.accumulate_grad_batches
        points.append({"job": job.name, "n_embd": model_cfg["n_embd"], "N": n, "D": d, "C": d * fpt,
                       "loss": result["final_val_loss"]})
    return points, model_cfg


def plot(points: list[dict], params: dict, frontier: list[dict], family, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    widths = sorted({p["n_embd"] for p in points})
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(widths)))
    for width, colour in zip(widths, colours):
        pts = sorted((p for p in points if p["n_embd"] == width), key=lambda p: p["C"])
        n, fpt = pts[0]["N"], pts[0]["C"] / pts[0]["D"]
        d = np.geomspace(min(p["D"] for p in points) / 2, max(p["D"] for p in points) * 2, 50)
        ax.plot(d * fpt, predict(params, np.full_like(d, n), d), color=colour, lw=0.8, alpha=0.6)
        ax.scatter([p["C"] for p in pts], [p["loss"] for p in pts], color=colour, label=f"width {width}, N={n / 1e6:.2f}M")
    ax.plot([f["flops"] for f in frontier], [f["loss"] for f in frontier], "k--", lw=1.5, label="fitted frontier")
    ax.set(xscale="log", xlabel="training FLOPs (gptlab.flops)", ylabel="final val loss",
           title=f"L = {params['E']:.2f} + {params['A']:.3g}/N^{params['alpha']:.2f} + {params['B']:.3g}/D^{params['beta']:.2f}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path, nargs="?", default=ROOT / "outputs" / "scaling")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = ap.parse_args()
    points, model_cfg = load_points(args.sweep_dir)
    if len(points) < 6:
        sys.exit(f"{args.sweep_dir}: {len(points)} finished jobs; the 5-parameter fit needs at least 6")
    params = fit_law(*(np.array([p[k] for p in points], dtype=float) for k in ("N", "D", "loss")))
    family = size_family(model_cfg, range(16, 1025, 4))
    cs = [p["C"] for p in points]
    frontier = iso_flop_minima(params, family, np.geomspace(min(cs), max(cs) * 10, 25))
    optimal = params["beta"] / (params["alpha"] + params["beta"])  # N_opt ∝ C^a (C = 6ND)
    out = {"points": points, "fit": params, "N_opt_exponent_a": optimal, "iso_flop_minima": frontier,
           "chinchilla": CHINCHILLA, "kaplan": KAPLAN}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fit.json").write_text(json.dumps(out, indent=1))
    plot(points, params, frontier, family, args.out / "loss_vs_flops.png")
    print(json.dumps({"fit": params, "N_opt_exponent_a": optimal, "points": len(points)}, indent=1))


if __name__ == "__main__":
    main()
