"""Lightning overhead: gptlab's training step (train.py, real configs) vs a plain PyTorch loop
(the nanoGPT way) on the same model, batches, optimizer, schedule and clipping, side by side.

    .venv/bin/python experiments/benchmarks/train_throughput.py [--steps 400] [--chunk 20]
        [--rounds 1] [--variants fp32 bf16 compile] [overrides for train.py ...]

Interleaved in one process: train.py runs with its default logger and callbacks, and every
`--chunk` of its optimizer steps a callback pauses it and runs `--chunk` steps of the plain loop
(its own model, optimizer and batch stream, built from the same config). Each side's clock runs
only over its own steps, so both see the same machine, second by second; on a shared machine
separate whole runs differ by ±4% from the neighbours alone. Steps/s is counted after `--skip`
warm-up steps (compilation excluded), per wall-clock second and per CPU second of this process
(`time.process_time`, all its threads); `--threads 1` (default) keeps OpenMP spin-waiting out of
the CPU clock. Prints a Markdown table; figures go to experiments/benchmarks/README.md (Training).
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
from gptlab.data.build import build_datamodule  # noqa: E402
from gptlab.data.datamodule import RandomWindows, open_memmap  # noqa: E402
from gptlab.entrypoints.config import to_plain  # noqa: E402
from gptlab.entrypoints.train import train  # noqa: E402
from gptlab.lit_module import GPTLitModule  # noqa: E402
from tests.conftest import compose_train_cfg  # noqa: E402

VARIANTS = {
    "fp32": ["trainer.precision=32-true"],
    "bf16": ["trainer.precision=bf16-mixed"],
    "compile": ["model.compile=true"],
    "compile+bf16": ["model.compile=true", "trainer.precision=bf16-mixed"],
}


class PlainLoop:
    """nanoGPT's train.py inner loop on its own copy of the model (log_interval=1: loss.item())."""

    def __init__(self, cfg):
        torch.manual_seed(cfg.seed)
        datamodule = build_datamodule(cfg)
        datamodule.prepare_data()
        meta = read_meta(datamodule.data_dir)
        module = GPTLitModule(model={**to_plain(cfg.model), "vocab_size": meta["vocab_size"]},
                              optim=to_plain(cfg.optim))
        self.model = module.model
        if module.compile_model:
            self.model.compile()
        module._trainer = SimpleNamespace(precision=str(cfg.trainer.precision))  # the optimizer Lightning would get
        opt_cfg = module.configure_optimizers()
        self.optimizer, self.scheduler = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
        ids = open_memmap(datamodule.data_dir / "train.bin", meta["dtype"])
        self.stream = RandomWindows(ids, cfg.model.block_size, cfg.data.batch_size, cfg.seed)
        self.bf16 = "bf16" in str(cfg.trainer.precision)
        self.clip, self.accumulate = cfg.trainer.gradient_clip_val, cfg.trainer.accumulate_grad_batches
        self.n = 0

    def steps(self, count: int) -> None:
        for _ in range(count):
            for _ in range(self.accumulate):
                x, y = self.stream.batch(self.n)
                self.n += 1
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                    _, loss = self.model(x, y)
                (loss / self.accumulate).backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            loss.item()


class Interleave(L.Callback):
    """Every `chunk` optimizer steps of train.py (after `skip`), run `chunk` plain-loop steps.

    Clocks (wall, CPU) are summed per side; each side's time excludes the other's chunks. The
    plain loop gets `skip` warm-up steps of its own first.
    """

    next_plain: PlainLoop | None = None  # handed over by main() before each run (Hydra builds the callback)
    current: Interleave | None = None  # the instance of the last run, for main() to read

    def __init__(self, chunk: int, skip: int):
        self.chunk, self.skip = chunk, skip
        self.plain = Interleave.next_plain
        self.times = {"plain": [], "lightning": []}  # per chunk: (wall, cpu)
        Interleave.current = self

    @staticmethod
    def _now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def on_train_start(self, trainer, pl_module):
        self.plain.steps(self.skip)
        self._mark = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        step = trainer.global_step  # optimizer steps taken so far
        if step == self.skip:
            self._mark = self._now()
        elif step > self.skip and (step - self.skip) % self.chunk == 0:
            now = self._now()
            self.times["lightning"].append((now[0] - self._mark[0], now[1] - self._mark[1]))
            self.plain.steps(self.chunk)
            after = self._now()
            self.times["plain"].append((after[0] - now[0], after[1] - now[1]))
            self._mark = self._now()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps of train.py (the plain loop runs as many)")
    parser.add_argument("--skip", type=int, default=40, help="warm-up steps not timed, on each side")
    parser.add_argument("--chunk", type=int, default=20, help="steps per side between switches")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--variants", nargs="+", default=["fp32"], choices=sorted(VARIANTS))
    parser.add_argument("overrides", nargs="*", help="train.py overrides, before --variants (default: CPU recipe)")
    args = parser.parse_args()
    if (args.steps - args.skip) % args.chunk:
        parser.error(f"--steps minus --skip ({args.steps - args.skip}) must be a multiple of --chunk ({args.chunk})")
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="gptlab-bench-"))
    common = [f"trainer.max_steps={args.steps}", f"eval_interval={10 * args.steps}", "sample_after_training=0",
              f"callbacks.throughput.skip={args.skip}", f"callbacks.throughput.window={args.steps - args.skip}",
              "trainer.enable_model_summary=false", f"+callbacks.interleave._target_={__name__}.Interleave",
              f"+callbacks.interleave.chunk={args.chunk}", f"+callbacks.interleave.skip={args.skip}",
              *args.overrides]
    results: dict[str, dict[str, list[tuple[float, float]]]] = {v: {"plain": [], "lightning": []} for v in args.variants}
    loads = []
    for r in range(args.rounds):
        for variant in args.variants:
            over = [*common, *VARIANTS[variant]]
            loads.append(os.getloadavg()[0])
            plain = PlainLoop(compose_train_cfg(work / f"plain-{variant}-{r}", work / "data", over))
            cfg = compose_train_cfg(work / f"lightning-{variant}-{r}", work / "data", over)
            _run_interleaved(cfg, plain, args.steps)
            times = Interleave.current.times
            for side in ("plain", "lightning"):
                results[variant][side].extend(times[side])
            pw, pc, lw, lc = (_rate(times[side], args.chunk, i) for side in ("plain", "lightning") for i in (0, 1))
            print(f"[bench] round {r} {variant}: steps/s wall plain {pw:.2f} lightning {lw:.2f}, "
                  f"per CPU-s plain {pc:.2f} lightning {lc:.2f}", flush=True)
    loads.append(os.getloadavg()[0])

    print(f"\n{args.steps} steps ({args.skip} warm-up) × {args.rounds} rounds, interleaved in chunks of {args.chunk}, "
          f"overrides: {' '.join(args.overrides) or '(CPU recipe)'}; torch threads {torch.get_num_threads()}; "
          f"1-min load average {min(loads):.1f}–{max(loads):.1f}\n")
    print("| variant | plain loop steps/s (wall / CPU) | gptlab steps/s (wall / CPU) | gptlab / plain, wall | "
          "gptlab / plain, CPU | per-chunk CPU ratio: median (quartiles) |")
    print("|---|---|---|---|---|---|")
    for variant, res in results.items():
        p = [_rate(res["plain"], args.chunk, i) for i in (0, 1)]
        lt = [_rate(res["lightning"], args.chunk, i) for i in (0, 1)]
        per_chunk = sorted(pc[1] / lc[1] for pc, lc in zip(res["plain"], res["lightning"]))
        q = statistics.quantiles(per_chunk, n=4) if len(per_chunk) > 1 else per_chunk * 3
        print(f"| {variant} | {p[0]:.2f} / {p[1]:.2f} | {lt[0]:.2f} / {lt[1]:.2f} | {lt[0] / p[0]:.3f} | "
              f"{lt[1] / p[1]:.3f} | {q[1]:.3f} ({q[0]:.3f}–{q[2]:.3f}), {len(per_chunk)} chunks |")


def _rate(chunks: list[tuple[float, float]], chunk: int, clock: int) -> float:
    """Steps per second over all chunks of one side (clock 0: wall, 1: CPU)."""
    return chunk * len(chunks) / sum(c[clock] for c in chunks)


def _run_interleaved(cfg, plain: PlainLoop, steps: int) -> None:
    """train.py's own path (default callbacks and logger) with the Interleave callback fed `plain`."""
    Interleave.next_plain = plain
    result = train(cfg)
    assert result["steps"] == steps


if __name__ == "__main__":
    main()
