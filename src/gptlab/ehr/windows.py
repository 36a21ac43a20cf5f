"""Patient-aligned training windows: every window carries its patient's `<TL_START>` + sex + age.

A risk prompt is always "prefix + the newest tokens" of one patient (risk.prompt_ids), but random
windows over the concatenated bins usually start mid-timeline, without the patient's prefix, or
hold the previous patient's. As in ETHOS, each window here is built as

    prefix (<TL_START> … AGE) + timeline[o : o + block_size + 1 - len(prefix)]

where AGE is the age at timeline[o]'s time (`{split}_age.npy`, written by prepare), so a window
deep in a decades-long record says how old the patient is there, as a risk prompt cut to its
newest tokens does (risk.prompt_ids).

for a patient drawn with probability ∝ its number of timed tokens and an offset o drawn uniformly
among them. The target at the join (predicting timeline[o] from the AGE token) is ignored (-1)
unless o is the first timed token: for a later o, AGE is not what precedes timeline[o]. A
window whose timeline ends early is padded, with ignored targets (never another patient's tokens);
with pack=True it goes on instead with the next patients of the bin, each whole from its own
<TL_START> (no padding: on the synthetic cohort, median 69 tokens a timeline, padding is ~2/3 of a
192-token window). Batch n comes from rng(seed, rank, n), like RandomWindows, so exact resume only
needs n.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from gptlab.data.datamodule import BatchStream
from gptlab.model import IGNORE_INDEX


class PatientWindows(BatchStream):
    """Patient-aligned windows; batch n is drawn from rng(seed, rank, n)."""

    def __init__(self, ids: np.ndarray, index: np.ndarray, block_size: int, batch_size: int, seed: int,
                 start: int = 0, rank: int = 0, pack: bool = False, ages: np.ndarray | None = None):
        self.ids, self.block_size, self.batch_size, self.seed = ids, block_size, batch_size, seed
        if ages is not None and len(ages) != len(ids):
            raise ValueError(f"window ages hold {len(ages)} tokens but the bin {len(ids)}: re-run prepare")
        self.ages = ages
        self.start, self.rank, self.pack = start, rank, pack
        self.begin, self.end, self.prefix_end = (index[:, k].astype(np.int64) for k in (1, 2, 3))
        too_long = self.prefix_end - self.begin >= block_size
        if too_long.any():
            raise ValueError(f"{int(too_long.sum())} patient prefix(es) fill block_size={block_size}; "
                             "use a larger model.block_size")
        # offsets o in [prefix_end, end - 1): x = timeline[o] still has a next token to predict
        self.n_offsets = np.maximum(self.end - 1 - self.prefix_end, 0)
        if self.n_offsets.sum() == 0:
            raise ValueError("no patient has a timed event to train on")
        self.p = self.n_offsets / self.n_offsets.sum()

    def window(self, patient: int, o: int) -> tuple[np.ndarray, np.ndarray]:
        """x, y (each block_size long) for one patient and one offset into its timed tokens."""
        prefix = self.ids[self.begin[patient] : self.prefix_end[patient]].astype(np.int64)
        if self.ages is not None:
            prefix[-1] = self.ages[o]  # the age at the window's first timed token
        stop = len(self.ids) if self.pack else self.end[patient]
        rest = self.ids[o : min(o + self.block_size + 1 - len(prefix), stop)]
        chunk = np.concatenate([prefix, rest]).astype(np.int64)
        x = np.zeros(self.block_size, dtype=np.int64)  # padding: its outputs are never scored
        y = np.full(self.block_size, IGNORE_INDEX, dtype=np.int64)
        x[: len(chunk) - 1], y[: len(chunk) - 1] = chunk[:-1], chunk[1:]
        if o != self.prefix_end[patient]:
            y[len(prefix) - 1] = IGNORE_INDEX  # AGE → timeline[o] is not a transition of the timeline
        return x, y

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The (patient row, offset) pairs of batch n."""
        rng = np.random.default_rng([self.seed, self.rank, n])
        patients = rng.choice(len(self.p), size=self.batch_size, p=self.p)
        return patients, self.prefix_end[patients] + rng.integers(0, self.n_offsets[patients])

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(self.window(int(i), int(o)) for i, o in zip(*self.draw(n))))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def patient_windows(data_dir: Path, ids: np.ndarray, block_size: int, batch_size: int, seed: int,
                    start: int = 0, rank: int = 0, pack: bool = False, split: str = "train") -> PatientWindows:
    """The `data.windows` factory GPTDataModule calls for the train and val splits (reads `<split>_index.npy`)."""
    from gptlab.ehr.prepare import read_index, read_window_ages

    return PatientWindows(ids, read_index(data_dir, split), block_size, batch_size, seed, start, rank, pack,
                          ages=read_window_ages(data_dir, split))


packed_patient_windows = partial(patient_windows, pack=True)  # data.windows with short timelines packed
