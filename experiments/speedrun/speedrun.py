"""The CPU speedrun: nanoGPT's own train.py (issue 18's CPU recipe) and gptlab recipes, alternately, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/speedrun/speedrun.py [--shared ../shared] [--rounds 1] [--seeds 1337]
        [--recipe NAME="train.py overrides" ...] [--out experiments/speedrun/results.json]

Each round runs nanoGPT, then every gptlab recipe once per seed, one process at a time, so neighbours
on a shared machine load every side alike. Every process is timed from its launch (Python start-up,
data loading, validations and checkpoints included) and each validation line is stamped as it
arrives on stdout. Both validate every 250 steps on 20 batches (nanoGPT also scores 20 train batches
there). Reported per gptlab run, against the same round's nanoGPT:
  (a) the wall time until val ≤ --target (1.886), as a ratio to nanoGPT's time to the same;
  (b) the best val loss among its validations done within nanoGPT's whole wall time.
nanoGPT runs from a temporary copy of ../shared/anchors/nanoGPT, prepared as that folder's README says;
without ../shared the script says so and exits (gptlab never ships nanoGPT).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"  # the team's shared folder beside the checkout; --shared elsewhere (a worktree)
NANOGPT_RECIPE = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                  "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
                  "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
# NAME → train.py overrides; `--recipe` replaces these
RECIPES = {"gpt2_baseline": "", "speedrun_cpu": "experiment=speedrun_cpu"}
NANO_LINE = re.compile(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)")
GPTLAB_LINE = re.compile(r"^\[speedrun\] step (\d+) val ([\d.]+)")


def prepare_nanogpt(workdir: Path, shared: Path) -> Path:
    """A prepared copy of nanoGPT (anchors/README.md): the code, Tiny Shakespeare, prepare.py's bins."""
    anchor, text = shared / "anchors" / "nanoGPT", shared / "data" / "tinyshakespeare" / "input.txt"
    if not anchor.is_dir() or not text.is_file():
        sys.exit(f"speedrun: {anchor} or {text} is missing (no shared folder here; --shared names it): "
                 f"nothing to compare against, skipped")
    copy = workdir / "nanoGPT"
    shutil.copytree(anchor, copy)
    shutil.copy(text, copy / "data" / "shakespeare_char" / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=copy / "data" / "shakespeare_char", check=True,
                   capture_output=True)
    return copy


def timed(cmd: list[str], cwd: Path, pattern: re.Pattern, env: dict[str, str]) -> dict:
    """Run cmd; every stdout line matching pattern (step, val) stamped with seconds since launch."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    vals, tail = [], []
    for line in proc.stdout:
        tail = (tail + [line])[-20:]
        if m := pattern.match(line.strip()):
            vals.append((time.perf_counter() - start, int(m.group(1)), float(m.group(2))))
    wall = time.perf_counter() - start
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{''.join(tail)}")
    return {"wall_s": wall, "vals": vals}


def run_nanogpt(copy: Path, out: Path, env: dict[str, str]) -> dict:
    return timed([sys.executable, "-u", "train.py", *NANOGPT_RECIPE, f"--out_dir={out}"], copy, NANO_LINE, env)


def run_gptlab(overrides: str, seed: int, out: Path, env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-u", "train.py", *overrides.split(), f"seed={seed}", f"paths.run_dir={out}",
           "sample_after_training=0", "trainer.enable_progress_bar=false", "+callbacks.speedrun._target_=clock.ValLine"]
    env = {**env, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])}
    return timed(cmd, ROOT, GPTLAB_LINE, env)


def score(run: dict, nano: dict, target: float) -> dict:
    """(a) and (b) of one gptlab run against its round's nanoGPT run."""
    def reach(r):
        return next((t for t, _, v in r["vals"] if v <= target), None)

    t_run, t_nano = reach(run), reach(nano)
    within = [v for t, _, v in run["vals"] if t <= nano["wall_s"]]
    return {"time_to_target_s": t_run, "ratio_a": t_run / t_nano if t_run and t_nano else None,
            "best_val_within_nanogpt_wall_b": min(within) if within else None,
            "final_val": run["vals"][-1][2] if run["vals"] else None}


def mean_sd(xs: list[float | None]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    return f"{statistics.mean(xs):.3f}" + (f" ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else "")


def table(results: list[dict]) -> str:
    rows = ["| recipe | runs | wall s | final val | time to ≤ target s | (a) ratio | (b) best val in nanoGPT's wall |",
            "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["recipe"] for r in results):
        rs = [r for r in results if r["recipe"] == name]
        rows.append(f"| {name} | {len(rs)} | {mean_sd([r['wall_s'] for r in rs])} | "
                    f"{mean_sd([r.get('final_val') or r['vals'][-1][2] for r in rs])} | "
                    f"{mean_sd([r.get('time_to_target_s') for r in rs])} | {mean_sd([r.get('ratio_a') for r in rs])} | "
                    f"{mean_sd([r.get('best_val_within_nanogpt_wall_b') for r in rs])} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337])
    ap.add_argument("--recipe", action="append", default=[], help='NAME="train.py overrides" (repeatable)')
    ap.add_argument("--shared", type=Path, default=SHARED, help="the folder holding anchors/nanoGPT")
    ap.add_argument("--target", type=float, default=1.886)
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "speedrun" / "results.json")
    args = ap.parse_args()
    recipes = dict(r.split("=", 1) for r in args.recipe) or RECIPES
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = prepare_nanogpt(Path(tmp), args.shared)
        for rnd in range(args.rounds):
            nano = run_nanogpt(copy, Path(tmp) / f"nano{rnd}", env) | {"recipe": "nanoGPT", "round": rnd,
                                                                       "uptime": os.getloadavg()}
            results.append(nano | score(nano, nano, args.target))
            print(f"round {rnd} nanoGPT: {nano['wall_s']:.1f} s, vals {nano['vals']}", flush=True)
            for name, overrides in recipes.items():
                for seed in args.seeds:
                    run = run_gptlab(overrides, seed, Path(tmp) / f"{name}-{seed}-{rnd}", env)
                    results.append(run | score(run, nano, args.target) |
                                   {"recipe": name, "seed": seed, "round": rnd, "uptime": os.getloadavg()})
                    print(f"round {rnd} {name} seed {seed}: {json.dumps(results[-1])}", flush=True)
                    args.out.write_text(json.dumps(results, indent=1))
    args.out.write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
