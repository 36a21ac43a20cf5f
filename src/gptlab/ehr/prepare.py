"""Prepare a MEDS dataset for GPTDataModule: fit the EHRTokenizer on train, encode every split.

Layout written to out_dir (next to what text prepare writes):
  train.bin / val.bin / test.bin   token ids of the train / tuning / held_out splits
  {train,val,test}_index.npy       (n_subjects, 4) int64: subject_id, start, end, prefix_end offsets in
                                   the bin (prefix_end: where the first timed event begins)
  tokenizer.json, meta.json        (meta.json last, with the source hash and the counted problems)

Patients are concatenated, each timeline framed by <TL_START> … <TL_END>. With the default random
windows a training window may run from one patient's end into the next one's start; the
`gptlab.ehr.windows.PatientWindows` (data.windows) instead builds every window as one patient's
prefix + a stretch of that patient's timeline, the layout of a risk prompt, from this index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gptlab.data.prepare import (
    FORMAT_VERSION,
    _write_atomic,
    bins_match,
    dtype_for_vocab,
    read_meta,
    write_bin,
    write_meta,
)
from gptlab.ehr.meds import Problems, dataset_sha256, iter_timelines, read_code_names, read_dataset
from gptlab.ehr.tokenizer import EHRTokenizer

BIN_OF_SPLIT = {"train": "train", "tuning": "val", "held_out": "test"}
INDEX_COLUMNS = ["subject_id", "start", "end", "prefix_end"]  # meta.json names them: a change re-prepares
TOKENIZER_OPTIONS = ("min_count", "time_edges", "atc_levels", "age_bin_years", "n_quantiles")


def meds_source(data_cfg: dict[str, Any]) -> Path:
    """The MEDS folder a data config names; a `synthetic:` block generates it on first use."""
    path = Path(data_cfg["path"]).expanduser()
    synth = data_cfg.get("synthetic")
    if synth and not (path / "tasks").is_dir():
        from gptlab.ehr.synthetic import generate_cohort

        print(f"[gptlab] generating the synthetic cohort {synth} → {path}")
        generate_cohort(path, **synth)
    return path


def tokenizer_options(tok_cfg: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(tok_cfg) - {"kind", *TOKENIZER_OPTIONS})
    if unknown:
        raise ValueError(f"data.tokenizer: unknown EHR tokenizer option(s) {unknown}; valid: {list(TOKENIZER_OPTIONS)}")
    return {k: v for k, v in tok_cfg.items() if k in TOKENIZER_OPTIONS}


def save_index(path: Path, index: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the temp name
            np.save(f, index)

    _write_atomic(path, write)


def prepare_meds(data_cfg: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Fit the tokenizer on the train split only and write the bins, index and meta.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # an interrupted prepare must not look complete
    source = meds_source(data_cfg)
    problems = Problems()
    tables = read_dataset(source, problems)
    tok = EHRTokenizer.fit(iter_timelines(tables["train"]), code_names=read_code_names(source),
                           **tokenizer_options(data_cfg["tokenizer"]))
    dtype = dtype_for_vocab(tok.vocab_size)
    tok.save(out_dir / "tokenizer.json")
    counts: dict[str, int] = {}
    for split, name in BIN_OF_SPLIT.items():
        ids: list[int] = []
        index = []
        for tl in iter_timelines(tables[split], problems):
            start = len(ids)
            ids.extend(tok.encode_timeline(tl, problems=problems))
            index.append((tl.subject_id, start, len(ids), start + len(tok.prefix_ids(tl))))
        counts[f"{name}_tokens"] = write_bin(out_dir / f"{name}.bin", ids, dtype)
        counts[f"{name}_subjects"] = len(index)
        save_index(out_dir / f"{name}_index.npy", np.asarray(index, dtype=np.int64).reshape(-1, len(INDEX_COLUMNS)))
    meta = {
        "source": str(source.resolve()),
        "source_sha256": dataset_sha256(source),
        "tokenizer_config": dict(data_cfg["tokenizer"]),
        "tokenizer": tok.to_spec(),
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "splits": BIN_OF_SPLIT,
        "index_columns": INDEX_COLUMNS,
        "problems": problems.summary(),
        **counts,
    }
    write_meta(out_dir, meta)
    say_problems(problems, out_dir / "meta.json")
    return meta


# MEDS's own convention, not a fault: rows without a time are a subject's static facts
EXPECTED_PROBLEMS = ("null_time_rows_as_static_prefix",)


def say_problems(problems: Problems, meta_path: Path) -> None:
    """One console line with the counts of the rows handled by a rule; the examples stay in meta.json."""
    counts = {k: n for k, n in sorted(problems.counts.items()) if k not in EXPECTED_PROBLEMS}
    if counts:
        listing = ", ".join(f"{k} {n:,}" for k, n in counts.items())
        print(f"[gptlab] MEDS: {len(counts)} kinds of rows handled by a rule ({listing}); one example of each "
              f"under 'problems' in {meta_path}")


def ensure_prepared_meds(data_cfg: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Prepare unless out_dir already holds this very source with this tokenizer config."""
    out_dir = Path(out_dir)
    source = meds_source(data_cfg)
    try:
        meta = read_meta(out_dir)
        fresh = (meta.get("format_version") == FORMAT_VERSION and meta.get("tokenizer_config") == data_cfg["tokenizer"]
                 and meta.get("index_columns") == INDEX_COLUMNS
                 and bins_match(out_dir, meta, tuple(BIN_OF_SPLIT.values()))
                 and meta.get("source_sha256") == dataset_sha256(source))
    except (FileNotFoundError, ValueError):
        fresh = False
    if fresh:
        return meta
    print(f"[gptlab] preparing MEDS {source} → {out_dir} (EHR tokenizer, fitted on train)")
    return prepare_meds(data_cfg, out_dir)


def read_index(data_dir: str | Path, name: str = "test") -> np.ndarray:
    """(n_subjects, 4) subject_id, start, end, prefix_end of each timeline in `<name>.bin`."""
    return np.load(Path(data_dir) / f"{name}_index.npy")
