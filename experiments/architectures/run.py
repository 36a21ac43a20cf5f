"""The three Transformer families on the tasks each can express: train, score, tabulate.

    OMP_NUM_THREADS=1 python experiments/architectures/run.py            # the full grid (3 seeds)
    OMP_NUM_THREADS=1 python experiments/architectures/run.py --quick    # a reduced grid (tests)

Every run goes through gptlab.entrypoints.train.train (what `python train.py` calls) with the
overrides printed in results.jsonl, in this one process (one import of torch/Lightning for all
runs). A finished run is skipped when the script starts again, so it can be stopped and resumed.
Each run is scored once, on held-out splits: classification accuracy on `test`; exact match of
greedy decoding on `test` (lengths 1..L) and `test_long` (L+1..2L); for `continue` (generation) the
per-character cross-entropy of the target given the prefix on `test` (nats, teacher forcing) and the
exact match of the greedy 16-character continuation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from gptlab.entrypoints.config import compose_train

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# Matched sizes: n_embd 48, 4 heads; 5 blocks for decoder and encoder, 2 + 2 for the encoder–decoder
# (its decoder blocks carry a third, cross-attention, sub-layer): parameters within 10% (see table).
FAMILIES = {
    "decoder": ["model=decoder", "model.n_layer=5"],
    "encoder": ["model=encoder", "model.n_layer=5"],
    "encoder_decoder": ["model=encoder_decoder", "model.n_layer=2", "model.n_enc_layer=2"],
}
TASKS = {"speakers": "classify", "reverse": "seq2seq", "add": "seq2seq", "continue": "seq2seq"}
# optimizer steps per task (same for every family: the same examples seen), sized so that the whole
# grid fits about an hour of this shared 2-core CPU; speeches are cut to their first 64 characters
TASK_STEPS = {"speakers": 200, "reverse": 300, "add": 300, "continue": 300}
TASK_OVERRIDES = {"speakers": ["data.max_len=64"], "reverse": [], "add": [], "continue": []}
CANNOT = {("encoder", "add"): "the target's length is not the input's: an encoder writes one output per input position",
          ("encoder", "continue"): "generation: an encoder has no next-token distribution, and outputs aligned "
                                   "to the prefix would not be a continuation"}
COMMON = ["model.n_embd=48", "model.n_head=4", "model.block_size=128", "model.dropout=0.0",
          "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
          "sample_after_training=0", "optim.lr=2e-3", "optim.min_lr=2e-4", "optim.warmup_steps=50",
          "data.batch_size=32", "data.val_batches=5", "trainer.log_every_n_steps=25"]


def score(ckpt: str, data_dir: Path, objective: str) -> dict[str, float]:
    from gptlab.data.tasks import eval_batches
    from gptlab.tasks import exact_match, model_from_checkpoint, target_cross_entropy

    model, meta = model_from_checkpoint(ckpt)
    if meta["task"].get("generation"):  # lower is better; exact match of the whole continuation beside it
        test = eval_batches(data_dir, "test", 250)
        return {"test_xent_nats": target_cross_entropy(model, objective, test, meta["task"]),
                "test": exact_match(model, objective, test, meta["task"])}
    splits = ("test",) if objective == "classify" else ("test", "test_long")
    return {split: exact_match(model, objective, eval_batches(data_dir, split, 250), meta["task"]) for split in splits}


def one_run(out: Path, task: str, family: str, seed: int, steps: int) -> dict:
    from gptlab.cfg import to_plain
    from gptlab.data.build import data_folder
    from gptlab.entrypoints.train import train

    objective = TASKS[task]
    overrides = [*FAMILIES[family], f"data={task}", *TASK_OVERRIDES[task], f"objective={objective}", f"seed={seed}", *COMMON,
                 f"trainer.max_steps={steps}", f"eval_interval={steps // 2}", f"optim.lr_decay_steps={steps}"]
    run_dir = out / "runs" / f"{task}-{family}-s{seed}-{steps}steps"
    cfg = compose_train(run_dir, out / "data", overrides)
    result = train(cfg)
    start = time.perf_counter()
    scores = score(result["last_ckpt"], data_folder(to_plain(cfg.data), cfg.paths.data_dir), objective)
    from gptlab.tasks import model_from_checkpoint

    params = model_from_checkpoint(result["last_ckpt"])[0].num_params()
    return {"task": task, "family": family, "seed": seed, "run": run_dir.name, "steps": steps, "examples_seen": steps * 32,
            "params": params, "train_seconds": round(result["wall_seconds"], 1),
            "eval_seconds": round(time.perf_counter() - start, 1), "final_val_loss": result["final_val_loss"],
            **scores, "overrides": overrides}


def continue_baseline(out: Path) -> dict:
    """The character-unigram cross-entropy (nats/char) of the continue test targets, with the unigram counted
    on the training windows' targets (add-one smoothed): what a model ignoring the prefix would reach."""
    from gptlab.data.tasks import continue_examples

    cfg = compose_train(out / "runs" / "baselines", out / "data", ["data=continue", *TASK_OVERRIDES["continue"]]).data
    splits, text = continue_examples(dict(cfg))
    counts = {c: 1 for c in set(text)}
    for _, tgt in splits["train"]:
        for c in tgt:
            counts[c] += 1
    total = sum(counts.values())
    test = "".join(tgt for _, tgt in splits["test"])
    return {"continue_unigram_nats": float(-np.mean([np.log(counts[c] / total) for c in test]))}


def baselines(out: Path) -> dict:
    """Majority class and bag-of-characters logistic regression on the speakers test split."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    from gptlab.data.tasks import speaker_examples

    cfg = compose_train(out / "runs" / "baselines", out / "data", ["data=speakers", *TASK_OVERRIDES["speakers"]]).data
    splits, labels = speaker_examples(dict(cfg))
    (xtr, ytr), (xte, yte) = (tuple(zip(*splits[s])) for s in ("train", "test"))
    majority = max(set(ytr), key=ytr.count)
    vec = CountVectorizer(analyzer="char", lowercase=False)
    clf = LogisticRegression(max_iter=2000).fit(vec.fit_transform(xtr), ytr)
    return {"majority": float(np.mean([y == majority for y in yte])),
            "bag_of_chars_logreg": float(clf.score(vec.transform(xte), yte)),
            "n_train": len(xtr), "n_test": len(xte), "labels": labels}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "outputs" / "architectures"), help="runs and prepared data")
    ap.add_argument("--results", default=str(HERE), help="where results.jsonl and baselines.json go")
    ap.add_argument("--quick", action="store_true", help="1 seed, few steps: the reduced grid of the tests")
    ap.add_argument("--steps", type=int, default=None, help="override every task's TASK_STEPS")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every task's TASK_STEPS (longer training)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tasks", default=",".join(TASKS))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = 1 if args.quick else args.seeds
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    log = results / "results.jsonl"
    done = {(r["task"], r["family"], r["seed"]) for r in map(json.loads, log.read_text().splitlines())} \
        if log.exists() else set()
    tasks = args.tasks.split(",")
    for task in tasks:
        if task not in TASKS:
            raise SystemExit(f"--tasks: unknown task {task!r}; choose from {list(TASKS)}")
    base_file = results / "baselines.json"
    base = json.loads(base_file.read_text()) if base_file.exists() else {}
    if "speakers" in tasks and "majority" not in base:
        base.update(baselines(out))
    if "continue" in tasks and "continue_unigram_nats" not in base:
        base.update(continue_baseline(out))
    base_file.write_text(json.dumps(base, indent=1))
    for seed in range(seeds):  # seed-major: a stopped run still has every cell at its first seeds
        for task in tasks:
            for family in FAMILIES:
                if (task, family, seed) in done or (family, task) in CANNOT:
                    continue
                steps = 20 if args.quick else args.steps or round(TASK_STEPS[task] * args.scale)
                row = one_run(out, task, family, seed, steps)
                with open(log, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"[architectures] {task} {family} seed {seed}: "
                      f"{ {k: row[k] for k in ('test', 'test_long', 'test_xent_nats', 'params', 'train_seconds') if k in row} }",
                      flush=True)


if __name__ == "__main__":
    sys.exit(main())
