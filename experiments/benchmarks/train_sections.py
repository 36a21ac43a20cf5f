"""Where Lightning's extra time per training step goes: the CPU time of each part of a step in
train.py (between Lightning's hooks) beside the same parts of the plain loop, interleaved in
chunks in one process as in train_throughput.py.

    .venv/bin/python experiments/benchmarks/train_sections.py [--steps 440] [--chunk 20] [overrides ...]

Lightning's order inside one optimizer step (automatic optimization) is: batch start → forward
(training_step) → zero_grad → backward → on_after_backward / on_before_optimizer_step hooks →
clipping, optimizer, LR scheduler → batch end; then its loop fetches the next batch. Two probe
callbacks, one first and one last in the callback list, time the intervals between these hooks.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import PlainLoop  # noqa: E402

from gptlab.entrypoints.train import train  # noqa: E402
from tests.conftest import compose_train_cfg  # noqa: E402

clock = time.process_time
LIGHTNING = "1 loop: batch end → next batch start (loop, data fetch)", "2 forward (training_step)", \
    "3 zero_grad", "4 backward", "5 hooks after backward (callbacks incl. NaN guard)", \
    "6 clipping + optimizer + LR scheduler", "7 batch-end callbacks"
PLAIN = "1 data", "2 forward", "3 zero_grad + loss.item()", "4 backward", "6 clipping + optimizer + LR scheduler"


class First(L.Callback):
    """First in the callback list: marks the loop's part (before) and the optimizer's part (after)."""

    def __init__(self, probe: Probe):
        self.probe = probe

    def on_train_batch_start(self, *args):
        self.probe.mark(LIGHTNING[0])

    def on_train_batch_end(self, *args):
        self.probe.mark(LIGHTNING[5])


class Probe(L.Callback):
    """Last in the callback list; every `chunk` steps after `skip` it runs `chunk` plain steps."""

    plain: PlainLoop | None = None  # handed over by main() (Hydra builds the callback)
    current: Probe | None = None  # the instance of the run, for main() to read

    def __init__(self, chunk: int, skip: int):
        self.chunk, self.skip = chunk, skip
        self.lightning, self.plain_times = defaultdict(float), defaultdict(float)
        self.steps = {"lightning": 0, "plain": 0}
        self.on, self.t = False, None
        Probe.current = self

    def setup(self, trainer, pl_module, stage):
        trainer.callbacks = [First(self), *trainer.callbacks]  # a new list: Lightning is iterating the old one

    def mark(self, part: str) -> None:
        now = clock()
        if self.on and self.t is not None:
            self.lightning[part] += now - self.t
        self.t = now

    def on_before_zero_grad(self, *args):  # Lightning zeroes after the forward, before backward
        self.mark(LIGHTNING[1])

    def on_before_backward(self, *args):
        self.mark(LIGHTNING[2])

    def on_after_backward(self, *args):
        self.mark(LIGHTNING[3])

    def on_before_optimizer_step(self, *args):
        self.mark(LIGHTNING[4])

    def on_train_batch_end(self, trainer, *args):
        self.mark(LIGHTNING[6])
        step = trainer.global_step
        if step == self.skip:
            self.plain_steps(self.skip, timed=False)  # the plain loop's own warm-up
            self.on = True
        elif self.on and (step - self.skip) % self.chunk == 0:
            self.steps["lightning"] += self.chunk
            self.plain_steps(self.chunk, timed=True)
        self.t = clock()

    def plain_steps(self, count: int, timed: bool) -> None:
        p = Probe.plain
        for _ in range(count):
            t0 = clock()
            x, y = p.stream.batch(p.n)
            p.n += 1
            t1 = clock()
            _, loss = p.model(x, y)
            t2 = clock()
            loss.backward()
            t3 = clock()
            torch.nn.utils.clip_grad_norm_(p.model.parameters(), p.clip)
            p.optimizer.step()
            p.scheduler.step()
            t4 = clock()
            p.optimizer.zero_grad(set_to_none=True)
            loss.item()
            t5 = clock()
            if timed:
                for part, a, b in zip((PLAIN[0], PLAIN[1], PLAIN[3], PLAIN[4], PLAIN[2]), (t0, t1, t2, t3, t4),
                                      (t1, t2, t3, t4, t5)):
                    self.plain_times[part] += b - a
        if timed:
            self.steps["plain"] += count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=440)
    parser.add_argument("--skip", type=int, default=40)
    parser.add_argument("--chunk", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0: torch's default; CPU time then counts OpenMP spin-waits too)")
    parser.add_argument("overrides", nargs="*", help="train.py overrides (default: the CPU recipe)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="gptlab-sections-"))
    over = [f"trainer.max_steps={args.steps}", f"eval_interval={10 * args.steps}", "sample_after_training=0",
            "trainer.enable_model_summary=false", f"+callbacks.probe._target_={__name__}.Probe",
            f"+callbacks.probe.chunk={args.chunk}", f"+callbacks.probe.skip={args.skip}", *args.overrides]
    Probe.plain = PlainLoop(compose_train_cfg(work / "plain", work / "data", over))
    cfg = compose_train_cfg(work / "lightning", work / "data", over)
    if cfg.trainer.accumulate_grad_batches != 1:
        raise SystemExit("train_sections.py times one micro-batch per step: use trainer.accumulate_grad_batches=1")
    train(cfg)
    probe = Probe.current

    n_l, n_p = probe.steps["lightning"], probe.steps["plain"]
    print(f"\nCPU ms per step, {n_l} steps each side, interleaved in chunks of {args.chunk}, "
          f"torch threads {torch.get_num_threads()}, overrides: {' '.join(args.overrides) or '(CPU recipe)'}\n")
    print("| part of a step | gptlab (train.py) | plain loop | difference |")
    print("|---|---|---|---|")
    plain_by_number = {k.split()[0]: v / n_p * 1e3 for k, v in probe.plain_times.items()}
    for part in LIGHTNING:
        ours = probe.lightning[part] / n_l * 1e3
        theirs = plain_by_number.get(part.split()[0])
        print(f"| {part} | {ours:.3f} | {'' if theirs is None else f'{theirs:.3f}'} | "
              f"{ours - (theirs or 0.0):+.3f} |")
    total_l = sum(probe.lightning.values()) / n_l * 1e3
    total_p = sum(probe.plain_times.values()) / n_p * 1e3
    print(f"| **total** | **{total_l:.3f}** | **{total_p:.3f}** | **{total_l - total_p:+.3f}** "
          f"({total_l / total_p - 1:+.1%}) |")


if __name__ == "__main__":
    main()
