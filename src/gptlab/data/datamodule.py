"""GPTDataModule: serves windows of token ids from the prepared memmaps.

Training batches are random windows x = ids[i:i+T], y = ids[i+1:i+T+1]. The offsets of batch
number n are a pure function of (seed, rank, n), so
- every DDP rank draws different windows without any communication, and
- resuming only needs n (the count of batches consumed, kept in the checkpoint) to continue
  exactly the same sequence of batches.
Validation uses a fixed, evenly spaced set of windows so val loss is comparable across runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from gptlab.data.prepare import check_bin, read_meta
from gptlab.errors import UserError


def open_memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # np.memmap cannot map an empty file; setup's length check says what is wrong
        return np.empty(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def windows_at(ids: np.ndarray, offsets: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack x = ids[i:i+T] and y = ids[i+1:i+T+1] for each offset i into two (B, T) int64 tensors."""
    chunk = np.stack([ids[i : i + block_size + 1] for i in offsets]).astype(np.int64)
    chunk = torch.from_numpy(chunk)
    return chunk[:, :-1], chunk[:, 1:]


class BatchStream(IterableDataset):
    """An endless stream of batches start, start+1, …; subclasses say what batch(n) is."""

    start: int

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        n = self.start + worker  # DataLoader takes from its workers round-robin, so order is kept
        while True:
            yield self.batch(n)
            n += n_workers


class RandomWindows(BatchStream):
    """Windows anywhere in the token stream; batch n is drawn from rng(seed, rank, n)."""

    def __init__(self, ids: np.ndarray, block_size: int, batch_size: int, seed: int, start: int = 0,
                 rank: int = 0):
        self.ids, self.block_size, self.batch_size, self.seed = ids, block_size, batch_size, seed
        self.start, self.rank = start, rank
        self.high = len(ids) - block_size  # exclusive: the last start still leaves T+1 tokens

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, n])
        return windows_at(self.ids, rng.integers(0, self.high, size=self.batch_size), self.block_size)


class FixedWindows(Dataset):
    """Evenly spaced windows covering the split; item k is a whole batch."""

    def __init__(self, ids: np.ndarray, block_size: int, batch_size: int, num_batches: int,
                 rank: int = 0, world_size: int = 1):
        high = len(ids) - block_size - 1
        offsets = np.linspace(0, high, num=num_batches * batch_size).round().astype(np.int64)
        self.batches = offsets.reshape(num_batches, batch_size)[rank::world_size]
        self.ids, self.block_size = ids, block_size

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return windows_at(self.ids, self.batches[k], self.block_size)


class GPTDataModule(L.LightningDataModule):
    """Reads `train.bin`/`val.bin` + `meta.json` from data_dir (written by gptlab.data.prepare).

    `prepare` is an optional callable run once on rank 0 (in prepare_data) that makes sure
    data_dir is up to date, so a plain `python train.py` prepares on first use. `windows` is an
    optional factory of BatchStreams, called as windows(data_dir, ids, block_size, batch_size, seed,
    start, rank, split=...) (e.g. gptlab.ehr.windows.patient_windows): it makes the training stream,
    and validation scores its first val_batches batches over the val split, the same ones at every
    validation, so the val loss measures what training optimises. None: RandomWindows for training,
    FixedWindows (evenly spaced over the val split) for validation.
    """

    def __init__(self, data_dir: str | Path, block_size: int, batch_size: int, val_batches: int = 20,
                 num_workers: int = 0, seed: int = 1337, prepare: Callable[[], Any] | None = None,
                 windows: Callable[..., BatchStream] | None = None):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.block_size, self.batch_size, self.val_batches = block_size, batch_size, val_batches
        self.num_workers, self.seed = num_workers, seed
        self._prepare, self._windows = prepare, windows
        self.train_batches_consumed = 0  # saved in checkpoints: where the batch stream resumes

    @property
    def meta(self) -> dict[str, Any]:
        return read_meta(self.data_dir)

    def prepare_data(self) -> None:
        if self._prepare is not None:
            self._prepare()

    def setup(self, stage: str | None = None) -> None:
        meta = self.meta
        self.train_ids = open_memmap(self.data_dir / "train.bin", check_bin(self.data_dir, meta, "train"))
        self.val_ids = open_memmap(self.data_dir / "val.bin", check_bin(self.data_dir, meta, "val"))
        for split, ids in (("train", self.train_ids), ("val", self.val_ids)):
            if len(ids) < self.block_size + 1:
                raise UserError(
                    f"{self.data_dir / (split + '.bin')} holds {len(ids)} tokens, fewer than one window of "
                    f"block_size + 1 = {self.block_size + 1}; use more text or a smaller model.block_size"
                    + (" or a larger data.val_fraction" if split == "val" else "")
                )

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    def train_dataloader(self) -> DataLoader:
        make = RandomWindows if self._windows is None else partial(self._windows, self.data_dir, split="train")
        dataset = make(self.train_ids, self.block_size, self.batch_size, self.seed,
                       start=self.train_batches_consumed, rank=self._rank_world()[0])
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        if self._windows is not None:  # the training windows' kind: the same val_batches batches for any
            # number of ranks (drawn as rank 0 would, then shared out), so val losses compare across runs
            stream = self._windows(self.data_dir, self.val_ids, self.block_size, self.batch_size, self.seed,
                                   start=0, rank=0, split="val")
            batches = [stream.batch(n) for n in range(rank, self.val_batches, world)]
            return DataLoader(batches, batch_size=None, num_workers=0)
        dataset = FixedWindows(self.val_ids, self.block_size, self.batch_size, self.val_batches, rank, world)
        return DataLoader(dataset, batch_size=None, num_workers=0)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Called once per batch actually consumed (not per prefetched batch), so the count is exact.
        if self.trainer is not None and self.trainer.training:
            self.train_batches_consumed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"train_batches_consumed": self.train_batches_consumed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_batches_consumed = int(state_dict["train_batches_consumed"])
