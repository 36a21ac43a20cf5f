"""Lightning overhead: gptlab's training step (train.py, real configs) vs a plain PyTorch loop
(the nanoGPT way) on the same model, batches, optimizer, schedule and clipping, side by side.

    .venv/bin/python experiments/benchmarks/train_throughput.py [--steps 200] [--rounds 2]
        [--variants fp32 bf16 compile] [overrides for train.py ...]

Each round runs every variant once with the plain loop and once through train.py, alternating, so
both see the same machine load. Steps/s is counted after `--skip` warm-up steps (compilation
excluded), both per wall-clock second and per CPU second of this process (`time.process_time`,
all its threads): on a shared machine the wall clock measures the neighbours, the CPU clock
measures the work. `--threads 1` (default) keeps OpenMP spin-waiting out of the CPU clock.
Prints a Markdown table; figures go to experiments/benchmarks/README.md (Training).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gptlab.data import read_meta  # noqa: E402
from gptlab.data.datamodule import RandomWindows, open_memmap  # noqa: E402
from gptlab.entrypoints.config import to_plain  # noqa: E402
from gptlab.entrypoints.train import build_datamodule, train  # noqa: E402
from gptlab.lit_module import GPTLitModule  # noqa: E402
from tests.conftest import compose_train_cfg  # noqa: E402

VARIANTS = {
    "fp32": ["trainer.precision=32-true"],
    "bf16": ["trainer.precision=bf16-mixed"],
    "compile": ["model.compile=true"],
    "compile+bf16": ["model.compile=true", "trainer.precision=bf16-mixed"],
}


class Clocks(L.Callback):
    """Wall and CPU time from the start of step `skip` to the end of training (in train.py's run)."""

    last: tuple[float, float] = (0.0, 0.0)

    def __init__(self, skip: int):
        self.skip = skip

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.skip and batch_idx % trainer.accumulate_grad_batches == 0:
            self.start = (time.perf_counter(), time.process_time())

    def on_train_end(self, trainer, pl_module):
        Clocks.last = (time.perf_counter() - self.start[0], time.process_time() - self.start[1])


def plain_loop(cfg, steps: int, skip: int) -> tuple[float, float]:
    """nanoGPT's train.py inner loop (log_interval=1: loss.item() every step); returns steps/s."""
    torch.manual_seed(cfg.seed)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    meta = read_meta(datamodule.data_dir)
    module = GPTLitModule(model={**to_plain(cfg.model), "vocab_size": meta["vocab_size"]}, optim=to_plain(cfg.optim))
    model = module.model
    if module.compile_model:
        model.compile()
    module._trainer = SimpleNamespace(precision=str(cfg.trainer.precision))  # the optimizer Lightning would get
    opt_cfg = module.configure_optimizers()
    optimizer, scheduler = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    ids = open_memmap(datamodule.data_dir / "train.bin", meta["dtype"])
    stream = RandomWindows(ids, cfg.model.block_size, cfg.data.batch_size, cfg.seed)
    bf16 = "bf16" in str(cfg.trainer.precision)
    clip, accumulate = cfg.trainer.gradient_clip_val, cfg.trainer.accumulate_grad_batches
    n = 0
    for step in range(steps):
        if step == skip:
            start = (time.perf_counter(), time.process_time())
        for _ in range(accumulate):
            x, y = stream.batch(n)
            n += 1
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                _, loss = model(x, y)
            (loss / accumulate).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
    return (steps - skip) / (time.perf_counter() - start[0]), (steps - skip) / (time.process_time() - start[1])


def lightning_run(cfg, steps: int, skip: int) -> tuple[float, float]:
    """train.py's own path (default callbacks and logger, plus the Clocks callback)."""
    result = train(cfg)
    assert result["steps"] == steps
    wall, cpu = Clocks.last
    return (steps - skip) / wall, (steps - skip) / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--skip", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16"], choices=sorted(VARIANTS))
    parser.add_argument("overrides", nargs="*", help="train.py overrides, before --variants (default: CPU recipe)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="gptlab-bench-"))
    common = [f"trainer.max_steps={args.steps}", f"eval_interval={10 * args.steps}", "sample_after_training=0",
              f"callbacks.throughput.skip={args.skip}", f"callbacks.throughput.window={args.steps - args.skip}",
              "trainer.enable_model_summary=false", f"+callbacks.clocks._target_={__name__}.Clocks",
              f"+callbacks.clocks.skip={args.skip}", *args.overrides]
    results: dict[str, dict[str, list[tuple[float, float]]]] = {v: {"plain": [], "lightning": []} for v in args.variants}
    loads = []
    for r in range(args.rounds):
        for variant in args.variants:
            over = [*common, *VARIANTS[variant]]
            loads.append(os.getloadavg()[0])
            cfg = compose_train_cfg(work / f"plain-{variant}-{r}", work / "data", over)
            results[variant]["plain"].append(plain_loop(cfg, args.steps, args.skip))
            cfg = compose_train_cfg(work / f"lightning-{variant}-{r}", work / "data", over)
            results[variant]["lightning"].append(lightning_run(cfg, args.steps, args.skip))
            (pw, pc), (lw, lc) = results[variant]["plain"][-1], results[variant]["lightning"][-1]
            print(f"[bench] round {r} {variant}: steps/s wall plain {pw:.2f} lightning {lw:.2f}, "
                  f"per CPU-s plain {pc:.2f} lightning {lc:.2f}", flush=True)
    loads.append(os.getloadavg()[0])

    print(f"\n{args.steps} steps ({args.skip} warm-up) × {args.rounds} rounds, overrides: {' '.join(args.overrides) or '(CPU recipe)'}; "
          f"torch threads {torch.get_num_threads()}; 1-min load average {min(loads):.1f}–{max(loads):.1f}\n")
    print("| variant | plain loop steps/s (wall / CPU) | gptlab steps/s (wall / CPU) | "
          "gptlab / plain, wall | gptlab / plain, CPU (per round) |")
    print("|---|---|---|---|---|")
    for variant, res in results.items():
        med = {k: [statistics.median(x[i] for x in res[k]) for i in (0, 1)] for k in res}
        ratios = [[lt[i] / p[i] for lt, p in zip(res["lightning"], res["plain"])] for i in (0, 1)]
        print(f"| {variant} | {med['plain'][0]:.2f} / {med['plain'][1]:.2f} | {med['lightning'][0]:.2f} / "
              f"{med['lightning'][1]:.2f} | {statistics.median(ratios[0]):.3f} | {statistics.median(ratios[1]):.3f} "
              f"({', '.join(f'{x:.3f}' for x in ratios[1])}) |")

if __name__ == "__main__":
    main()
