"""Task data for the three families: (input, target) examples instead of one token stream.

Kinds of task (`data.task`):
- `speakers`: Shakespeare speaker attribution. Each speech of Tiny Shakespeare without its speaker
  line is an input; its target is one label token naming the speaker (the `n_speakers` most frequent).
  Splits are drawn by speech, so no speech is in two splits.
- `reverse`, `sort`: a string of letters → the same letters reversed / sorted (a re-ordering).
- `add`: "a+b" → the decimal sum (arithmetic).
- `continue`: generation on real text: `prefix_len` characters of Tiny Shakespeare → the next
  `target_len` characters (no EOS: the target is always that long). Windows are cut at seeded
  positions, train from the first 85% of the text, val from 85–90%, test from the last 10%, each window
  wholly inside its region (no character in two splits); no `test_long` (a longer continuation would
  be a different target length, not a longer input: it is omitted, not faked). Vocabulary: every
  character of the text.
The seq2seq tasks are generated from `split_seed`; train/val/test hold inputs of length 1..`max_len`
(for `add`: digits per operand), `test_long` holds lengths max_len+1..2·max_len (length generalisation).

Layout of a prepared folder: `<split>.bin` (uint16, each example's input then its target, EOS-terminated
for seq2seq) and `<split>_index.npy` (n, 4) int64 = input start, input length, target start, target
length, for split in train/val/test/test_long; meta.json carries `task`: the special token ids,
the label tokens and the lengths the model must hold. Batches are `(src, tgt)`: src (B, S) padded
with <pad>, tgt (B, T) padded with -1. How a family reads them is gptlab.tasks' business.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptlab.data.datamodule import BatchStream
from gptlab.data.prepare import dtype_for_vocab, read_meta, write_bin, write_meta
from gptlab.paths import SHIPPED_SHAKESPEARE
from gptlab.tokenizers import CharTokenizer

# Special tokens are single private-use characters, so the char tokenizer (and its spec in meta.json)
# carries them without a new tokenizer kind; nothing in a task's text can collide with them.
PAD, SEP, EOS = "\ue000", "\ue001", "\ue002"
LABEL_BASE = 0xE100
SPLITS = ("train", "val", "test", "test_long")
SEQ2SEQ_TASKS = ("reverse", "sort", "add", "continue")
TASKS = ("speakers", *SEQ2SEQ_TASKS)
IGNORE = -1
FORMAT = 1


def label_char(k: int) -> str:
    return chr(LABEL_BASE + k)


# ---- examples ------------------------------------------------------------------------------------------
def shakespeare_speeches(text: str) -> list[tuple[str, str]]:
    """(speaker, speech) for every block "NAME:\\nlines..." of Tiny Shakespeare (blank-line separated)."""
    out = []
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        if len(lines) >= 2 and lines[0].endswith(":") and lines[0][:-1].strip():
            out.append((lines[0][:-1].strip(), "\n".join(lines[1:])))
    return out


def speaker_examples(cfg: dict[str, Any]) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """Splits of (speech, speaker) for the n_speakers most frequent speakers, split by speech."""
    text = Path(cfg.get("path") or SHIPPED_SHAKESPEARE).read_text(encoding="utf-8")
    speeches = shakespeare_speeches(text)
    n = int(cfg["n_speakers"])
    counts = Counter(s for s, _ in speeches)
    if not 2 <= n <= len(counts):
        raise ValueError(f"data.n_speakers={n}: give 2..{len(counts)} (the speakers of {cfg.get('path')})")
    labels = [s for s, _ in counts.most_common(n)]
    keep = [(speech[: cfg["max_len"]], s) for s, speech in speeches if s in set(labels)]
    order = np.random.default_rng(cfg["split_seed"]).permutation(len(keep))
    n_val, n_test = int(len(keep) * cfg["val_fraction"]), int(len(keep) * cfg["test_fraction"])
    parts = np.split(order, [n_val, n_val + n_test])
    splits = {"val": parts[0], "test": parts[1], "train": parts[2]}
    return {name: [keep[i] for i in idx] for name, idx in splits.items()}, labels


def seq2seq_example(task: str, length: int, rng: np.random.Generator) -> tuple[str, str]:
    if task == "add":
        a, b = (int("".join(map(str, rng.integers(0, 10, length)))) for _ in range(2))
        return f"{a}+{b}", str(a + b)
    s = "".join(chr(ord("a") + int(i)) for i in rng.integers(0, 26, length))
    return s, s[::-1] if task == "reverse" else "".join(sorted(s))


def seq2seq_examples(cfg: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Seeded splits; the held-out ones never repeat a training input."""
    task, L, rng = cfg["task"], int(cfg["max_len"]), np.random.default_rng(cfg["split_seed"])
    sizes = {"train": cfg["n_train"], "val": cfg["n_eval"], "test": cfg["n_eval"], "test_long": cfg["n_eval"]}
    seen: set[str] = set()
    out = {}
    for split in SPLITS:
        lo, hi = (L + 1, 2 * L) if split == "test_long" else (1, L)
        examples = []
        for _ in range(50 * sizes[split]):  # bounded: short lengths have few distinct inputs
            if len(examples) == sizes[split]:
                break
            src, tgt = seq2seq_example(task, int(rng.integers(lo, hi + 1)), rng)
            if split == "train" or src not in seen:
                examples.append((src, tgt))
        seen |= {s for s, _ in examples}
        out[split] = examples
    return out


def continue_examples(cfg: dict[str, Any]) -> tuple[dict[str, list[tuple[str, str]]], str]:
    """Seeded (prefix → next characters) windows of the text, each split from its own region of it,
    and the text (whose characters are the vocabulary)."""
    text = Path(cfg.get("path") or SHIPPED_SHAKESPEARE).read_text(encoding="utf-8")
    P, Q = int(cfg["prefix_len"]), int(cfg["target_len"])
    if P < 1 or Q < 1:
        raise ValueError(f"data.prefix_len={P}, data.target_len={Q}: both must be >= 1")
    rng, n = np.random.default_rng(cfg["split_seed"]), len(text)
    # train | val | test regions by position: a window never crosses a boundary, so none shares a character
    bounds = {"train": (0, int(0.85 * n)), "val": (int(0.85 * n), int(0.9 * n)), "test": (int(0.9 * n), n)}
    sizes = {"train": cfg["n_train"], "val": cfg["n_eval"], "test": cfg["n_eval"]}
    out = {}
    for split, (lo, hi) in bounds.items():
        if hi - lo < P + Q:
            raise ValueError(f"data.path={cfg.get('path')}: the {split} region ({hi - lo} chars) is shorter than "
                             f"data.prefix_len + data.target_len = {P + Q}")
        starts = rng.integers(lo, hi - P - Q + 1, int(sizes[split]))
        out[split] = [(text[a : a + P], text[a + P : a + P + Q]) for a in starts.tolist()]
    return out, text


# ---- writing --------------------------------------------------------------------------------------------
def encode_split(tok: CharTokenizer, examples: list[tuple[str, str]], eos: bool, where: str) -> tuple[list, np.ndarray]:
    """Flat ids and the (n, 4) index; an empty input or target is an error naming it."""
    ids, index = [], []
    for i, (src, tgt) in enumerate(examples):
        if not src or not tgt:
            raise ValueError(f"{where} example {i}: empty {'input' if not src else 'target'} ({src!r} → {tgt!r})")
        s, t = tok.encode(src), tok.encode(tgt + (EOS if eos else ""))
        index.append((len(ids), len(s), len(ids) + len(s), len(t)))
        ids += s + t
    return ids, np.asarray(index, dtype=np.int64).reshape(-1, 4)


def config_hash(cfg: dict[str, Any]) -> str:
    keys = ("task", "path", "prefix_len", "target_len", "n_speakers", "max_len", "split_seed", "val_fraction", "test_fraction", "n_train", "n_eval")
    return hashlib.sha256(json.dumps({k: cfg.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()[:16]


def prepare_task(cfg: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Write the splits, indexes and meta.json of the task data.task names."""
    task, out_dir = cfg.get("task"), Path(out_dir)
    if task not in TASKS:
        raise ValueError(f"data.task={task!r}: choose one of {TASKS}")
    labels: list[str] = []
    text = ""  # the continue task's source text: all its characters join the vocabulary
    if task == "speakers":
        raw, labels = speaker_examples(cfg)
        splits = {k: [(speech, label_char(labels.index(s))) for speech, s in v] for k, v in raw.items()}
    elif task == "continue":
        splits, text = continue_examples(cfg)
    else:
        splits = seq2seq_examples(cfg)
    chars = {c for v in splits.values() for ex in v for c in "".join(ex)} | set(text) | {PAD, SEP, EOS}
    tok = CharTokenizer(chars | {label_char(k) for k in range(len(labels))})
    dtype, meta, spans = dtype_for_vocab(tok.vocab_size), {}, {"src": 0, "tgt": 0}
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, examples in splits.items():
        ids, index = encode_split(tok, examples, eos=task not in ("speakers", "continue"), where=f"data.task={task} {split}")
        meta[f"{split}_tokens"] = write_bin(out_dir / f"{split}.bin", ids, dtype)
        np.save(out_dir / f"{split}_index.npy", index)
        meta[f"{split}_examples"] = len(index)
        spans = {"src": max(spans["src"], int(index[:, 1].max())), "tgt": max(spans["tgt"], int(index[:, 3].max()))}
    meta["task"] = {
        "name": task, "kind": "classify" if task == "speakers" else "seq2seq",
        "pad_id": tok.stoi[PAD], "sep_id": tok.stoi[SEP], "eos_id": tok.stoi[EOS],
        "labels": labels, "label_ids": [tok.stoi[label_char(k)] for k in range(len(labels))],
        # aligned: the target is as long as the input (an encoder can write it, one output per position)
        "aligned": task in ("reverse", "sort"), "generation": task == "continue", "splits": list(splits),
        "group_by_length": task in SEQ2SEQ_TASKS, "max_src_len": spans["src"], "max_tgt_len": spans["tgt"],
        "config_hash": config_hash(cfg), "format": FORMAT,
    }
    write_meta(out_dir, {**meta, "vocab_size": tok.vocab_size, "dtype": dtype.name, "tokenizer": tok.to_spec()})
    return read_meta(out_dir)


def ensure_task_prepared(cfg: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """`data.prepare` for task data: prepare unless meta.json records this very configuration."""
    try:
        meta = read_meta(out_dir)
        if meta.get("task", {}).get("config_hash") == config_hash(cfg) and meta["task"].get("format") == FORMAT:
            return meta
    except (FileNotFoundError, ValueError):
        pass
    return prepare_task(cfg, out_dir)


# ---- batches --------------------------------------------------------------------------------------------
def read_examples(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The token ids and (n, 4) index of one split."""
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    have = meta.get("task", {}).get("splits", SPLITS)
    if split not in have:
        raise ValueError(f"split={split!r}: {data_dir} holds {tuple(have)}")
    ids = np.fromfile(data_dir / f"{split}.bin", dtype=np.dtype(meta["dtype"]))
    return ids, np.load(data_dir / f"{split}_index.npy")


def collate(ids: np.ndarray, index: np.ndarray, rows: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(src, tgt) of the chosen examples: src right-padded with pad_id, tgt with -1 (never scored)."""
    S, T = int(index[rows, 1].max()), int(index[rows, 3].max())
    src = np.full((len(rows), S), pad_id, dtype=np.int64)
    tgt = np.full((len(rows), T), IGNORE, dtype=np.int64)
    for r, (s0, sn, t0, tn) in enumerate(index[rows]):
        src[r, :sn], tgt[r, :tn] = ids[s0 : s0 + sn], ids[t0 : t0 + tn]
    return torch.from_numpy(src), torch.from_numpy(tgt)


class TaskBatches(BatchStream):
    """Batch n: batch_size examples drawn from rng(seed, rank, n) (so resume needs only n).

    With group_by_length every batch holds inputs of one length (the length drawn ∝ its examples), so
    no input carries padding the encoder would read; otherwise inputs are padded to the batch's longest."""

    def __init__(self, ids: np.ndarray, index: np.ndarray, batch_size: int, seed: int, pad_id: int,
                 group_by_length: bool, start: int = 0, rank: int = 0):
        self.ids, self.index, self.batch_size, self.seed, self.pad_id = ids, index, batch_size, seed, pad_id
        self.start, self.rank = start, rank
        lengths = index[:, 1]
        self.groups = [np.flatnonzero(lengths == n) for n in np.unique(lengths)] if group_by_length else [np.arange(len(index))]
        self.p = np.array([len(g) for g in self.groups], dtype=float) / len(index)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, n])
        group = self.groups[rng.choice(len(self.groups), p=self.p)]
        return collate(self.ids, self.index, rng.choice(group, size=self.batch_size), self.pad_id)


def task_windows(data_dir: Path, ids: np.ndarray, block_size: int, batch_size: int, seed: int,
                 start: int = 0, rank: int = 0, split: str = "train") -> TaskBatches:
    """The `data.windows` factory GPTDataModule calls for the train and val splits."""
    task = read_meta(data_dir)["task"]
    _, index = read_examples(data_dir, split)
    return TaskBatches(ids, index, batch_size, seed, task["pad_id"], task["group_by_length"], start, rank)


def eval_batches(data_dir: str | Path, split: str, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every example of a split once, in batches (one input length per batch when group_by_length)."""
    task = read_meta(data_dir)["task"]
    ids, index = read_examples(data_dir, split)
    groups = [np.flatnonzero(index[:, 1] == n) for n in np.unique(index[:, 1])] if task["group_by_length"] \
        else [np.arange(len(index))]
    return [collate(ids, index, rows[s : s + batch_size], task["pad_id"])
            for rows in groups for s in range(0, len(rows), batch_size)]
