"""Prepare a MEDS dataset for GPTDataModule: fit the EHRTokenizer on train, encode every split.

Layout written to out_dir (next to what text prepare writes):
  train.bin / val.bin / test.bin   token ids of the train / tuning / held_out splits
  {train,val,test}_index.npy       (n_subjects, 4) int64: subject_id, start, end, prefix_end offsets in
                                   the bin (prefix_end: where the first timed event begins)
  {train,val,test}_age.npy         per token of the bin, the AGE token id a window starting there
                                   restates (the age at that token's time; tokenizer age_at)
  tokenizer.json, meta.json        (meta.json last, with the source hash and the counted problems)

Patients are concatenated, each timeline framed by <TL_START> … <TL_END>. With the default random
windows a training window may run from one patient's end into the next one's start; the
`gptlab.ehr.windows.PatientWindows` (data.windows) instead builds every window as one patient's
prefix + a stretch of that patient's timeline, the layout of a risk prompt, from this index.
"""

from __future__ import annotations

import json
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
TOKENIZER_OPTIONS = ("min_count", "time_edges", "atc_levels", "age_bin_years", "n_quantiles", "long_gaps", "age_at",
                     "age_updates")


def meds_source(data_cfg: dict[str, Any]) -> Path:
    """The MEDS folder a data config names; a `synthetic:` block generates it on first use."""
    path = Path(data_cfg["path"]).expanduser()
    synth = data_cfg.get("synthetic")
    if synth:
        from gptlab.ehr.synthetic import cohort_version, generate_cohort

        want = cohort_version(**{k: synth[k] for k in ("n_patients", "seed", "horizon_days", "shape") if k in synth})
        meta = path / "metadata" / "dataset.json"
        have = json.loads(meta.read_text()).get("dataset_version") if meta.exists() else None
        if not (path / "tasks").is_dir() or have != want:
            # an older generator's labels must not be scored as this one's; the same records hash
            # the same, so the prepared bins stay valid when only the labels changed
            why = "" if have is None else f" (found version {have}, this generator writes {want})"
            print(f"[gptlab] generating the synthetic cohort {synth} → {path}{why}")
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
    problems = {"dataset": Problems(), **{split: Problems() for split in BIN_OF_SPLIT}}
    tables = read_dataset(source, problems["dataset"])
    tok = EHRTokenizer.fit(iter_timelines(tables["train"]), code_names=read_code_names(source),
                           **tokenizer_options(data_cfg["tokenizer"]))
    dtype = dtype_for_vocab(tok.vocab_size)
    tok.save(out_dir / "tokenizer.json")
    counts: dict[str, int] = {}
    for split, name in BIN_OF_SPLIT.items():
        counts.update(encode_split(tok, tables[split], problems[split], out_dir, name, dtype))
    meta = {
        "source": str(source.resolve()),
        "source_sha256": dataset_sha256(source),
        "tokenizer_config": dict(data_cfg["tokenizer"]),
        "tokenizer": tok.to_spec(),
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "splits": BIN_OF_SPLIT,
        "index_columns": INDEX_COLUMNS,
        "problems": pooled(problems.values()).summary(),
        "problems_by_split": {k: p.summary() for k, p in problems.items()},
        "rows_by_split": {split: int(tables[split].num_rows) for split in BIN_OF_SPLIT},
        "window_age": True,
        **counts,
    }
    write_meta(out_dir, meta)
    say_problems(pooled(problems.values()), out_dir / "meta.json")  # per split: meta.json and every report
    return meta


def encode_split(tok: EHRTokenizer, table, problems: Problems, out_dir: Path, name: str, dtype) -> dict[str, int]:
    """Write `<name>.bin`, its patient index and the per-token window ages of one split."""
    ids: list[int] = []
    ages: list[np.ndarray] = []
    index = []
    for tl in iter_timelines(table, problems):
        start = len(ids)
        tl_ids, times, plen = tok.encode_with_times(tl, problems=problems)
        ids.extend(tl_ids)
        ages.append(tok.window_age_ids(tl, times))
        index.append((tl.subject_id, start, len(ids), start + plen))
    n_tokens = write_bin(out_dir / f"{name}.bin", ids, dtype)
    save_index(out_dir / f"{name}_index.npy", np.asarray(index, dtype=np.int64).reshape(-1, len(INDEX_COLUMNS)))
    age = np.concatenate(ages).astype(dtype) if ages else np.zeros(0, dtype)
    save_index(out_dir / f"{name}_age.npy", age)
    return {f"{name}_tokens": n_tokens, f"{name}_subjects": len(index)}


def pooled(parts) -> Problems:
    """One tally of several (the pooled counts an old reader of meta.json expects)."""
    out = Problems()
    for p in parts:
        for key, n in p.counts.items():
            out.add(key, n, p.examples.get(key, ""))
    return out


def problem_lines(by_split: dict[str, dict], rows: dict[str, int] | None = None) -> list[str]:
    """`split: problem: count (rate of the split's rows)` lines: a fault of held-out data alone
    (e.g. codes unseen in train → UNK) must not hide in a pooled count."""
    out = []
    for split, probs in by_split.items():
        n_rows = (rows or {}).get(split)
        for key, p in probs.items():
            rate = f", {p['count'] / n_rows:.2%} of {n_rows:,} rows" if n_rows and key.startswith(ROW_PROBLEMS) else ""
            example = f" (e.g. {p['example']})" if p.get("example") else ""
            out.append(f"{split}: {key}: {p['count']}{rate}{example}")
    return out


# problems counted once per MEDS row (their rate over the split's rows means something)
ROW_PROBLEMS = ("rare_or_unknown_", "values_of_codes_without_deciles", "icd9_without", "invalid_icd10",
                "null_time_rows", "unsorted_rows")


# MEDS's own convention, not a fault: rows without a time are a subject's static facts
EXPECTED_PROBLEMS = ("null_time_rows_as_static_prefix",)


def say_problems(problems: Problems, meta_path: Path) -> None:
    """One console line with the counts of the rows handled by a rule; the examples stay in meta.json."""
    counts = {k: n for k, n in sorted(problems.counts.items()) if k not in EXPECTED_PROBLEMS}
    if counts:
        listing = ", ".join(f"{k} {n:,}" for k, n in counts.items())
        print(f"[gptlab] MEDS: {len(counts)} kinds of rows handled by a rule ({listing}); one example of each "
              f"under 'problems' (per split: 'problems_by_split') in {meta_path}")


def ensure_prepared_meds(data_cfg: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Prepare unless out_dir already holds this very source with this tokenizer config."""
    out_dir = Path(out_dir)
    source = meds_source(data_cfg)
    try:
        meta = read_meta(out_dir)
        fresh = (meta.get("format_version") == FORMAT_VERSION and meta.get("tokenizer_config") == data_cfg["tokenizer"]
                 and meta.get("index_columns") == INDEX_COLUMNS and meta.get("window_age") is True
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


def read_window_ages(data_dir: str | Path, name: str = "train") -> np.ndarray | None:
    """Per token of `<name>.bin`, the AGE id a window starting there restates (None: prepared
    before windows restated the age; windows then keep the first-event age)."""
    path = Path(data_dir) / f"{name}_age.npy"
    return np.load(path) if path.exists() else None
