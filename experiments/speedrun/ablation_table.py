"""The ablation table of `train.py hparams_search=speedrun_ablation` (issue 18).

    .venv/bin/python experiments/speedrun/ablation_table.py outputs/speedrun_ablation [--out experiments/speedrun/ablation.json]

Each job is read by the sweep's own reader (`gptlab.entrypoints.sweep_summary.sweep_rows`: its
.hydra/overrides.yaml names the variant and seed); its result.json gives
the final val loss (20 batches at step 750) and the wall time of the run (trainer.fit; left out for a
run that was resumed, whose clock covers only its last part). Per variant:
mean ± sd over the seeds found, the difference to the GPT-2 baseline's mean, and the mean wall time
(the runs shared a 2-core machine with other jobs: read wall times as rough, the losses as exact).
A variant with fewer finished seeds than the others is marked.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from gptlab.entrypoints.sweep_summary import sweep_rows

ORDER = ["gpt2", "rope", "rmsnorm", "relu2", "swiglu", "qk_norm", "untied", "softcap", "zero_init",
         "wsd", "lr3e-3", "muon", "speedrun"]


def collect(sweep: Path) -> dict[str, dict[int, dict]]:
    """variant → seed → result.json of the finished jobs (the sweep's own reader, sweep_rows)."""
    runs: dict[str, dict[int, dict]] = {}
    for row in sweep_rows(sweep):
        r, over = row["result"], dict(o.lstrip("+").split("=", 1) for o in row["overrides"])
        if r is None or r.get("final_val_loss") is None or "ablation" not in over:
            continue
        log = sweep / str(row["job"]) / "train.log"
        if log.exists() and "resume=auto: resuming from" in log.read_text():
            r["wall_seconds"] = None  # a resumed run's clock covers only its last part
        runs.setdefault(over["ablation"], {})[int(over.get("seed", 0))] = r
    return runs


def table(runs: dict[str, dict[int, dict]]) -> tuple[list[str], dict]:
    if "gpt2" not in runs:
        raise SystemExit("no finished gpt2 (baseline) job yet: nothing to compare against")
    base = statistics.mean(r["final_val_loss"] for r in runs["gpt2"].values())
    most = max(len(v) for v in runs.values())
    out = {}
    lines = ["| variant | seeds | val loss at step 750, mean ± sd | − GPT-2 baseline | wall s (trainer.fit), mean |",
             "|---|---|---|---|---|"]
    for name in sorted(runs, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        losses = [r["final_val_loss"] for _, r in sorted(runs[name].items())]
        walls = [r["wall_seconds"] for r in runs[name].values() if r.get("wall_seconds")]
        mean = statistics.mean(losses)
        sd = statistics.stdev(losses) if len(losses) > 1 else float("nan")
        out[name] = {"seeds": sorted(runs[name]), "val_losses": losses, "mean": mean, "sd": sd,
                     "minus_baseline": mean - base, "wall_seconds_mean": statistics.mean(walls) if walls else None}
        mark = "" if len(losses) == most else " (incomplete)"
        wall = f"{statistics.mean(walls):.0f}" if walls else "–"
        lines.append(f"| {name}{mark} | {len(losses)} | {mean:.4f} ± {sd:.4f} | {mean - base:+.4f} | {wall} |")
    return lines, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="write the per-variant figures as JSON here")
    ap.add_argument("--plot", type=Path, default=None, help="write a bar chart (mean ± sd per variant) here")
    args = ap.parse_args()
    if not args.sweep.is_dir():
        raise SystemExit(f"error: {args.sweep} is not a folder; run `train.py hparams_search=speedrun_ablation` first")
    lines, out = table(collect(args.sweep))
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    if args.plot:
        plot(out, args.plot)


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(names, [out[n]["mean"] for n in names], yerr=[out[n]["sd"] for n in names], capsize=3,
           color=["grey" if n == "gpt2" else "tab:green" if n == "speedrun" else "tab:blue" for n in names])
    ax.axhline(out["gpt2"]["mean"], color="grey", lw=0.8, ls="--", label="GPT-2 baseline")
    ax.axhline(1.886, color="tab:red", lw=0.8, ls=":", label="nanoGPT's final val (1.886)")
    lo = min(out[n]["mean"] for n in names)
    ax.set_ylim(lo - 0.1, out["gpt2"]["mean"] + 0.05)
    ax.set_ylabel("val loss at step 750 (mean ± sd, 3 seeds)")
    ax.set_title("speedrun ablation: each change alone on the GPT-2 baseline, and all together")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
