"""Reading MEDS data (https://github.com/Medical-Event-Data-Standard/meds) with loud validation.

A MEDS dataset is `data/<split>/*.parquet` with one row per measurement (`subject_id`, `time`,
`code`, `numeric_value`, optional extra columns), `metadata/codes.parquet` (code descriptions) and
`metadata/subject_splits.parquet`; task labels follow the MEDS label schema (`subject_id`,
`prediction_time`, `boolean_value`, ...). Rows with a null `time` are static (e.g. `GENDER//F`).

Bad input never disappears silently: structural faults (missing columns, null subject ids or
codes, a subject in two splits) raise with the file and the count; what passes our counted checks is
then aligned to the `meds` package's own schemas (DataSchema, LabelSchema, SubjectSplitSchema: their
types and null rules), and a table they refuse raises naming the file; recoverable ones (unsorted
rows, subjects without timed events) are fixed or skipped and counted in a `Problems` tally that
prepare writes into meta.json and the eval report prints.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REQUIRED_COLUMNS = ("subject_id", "time", "code")
DATA_COLUMNS = (*REQUIRED_COLUMNS, "numeric_value")  # numeric_value may be absent (MEDS: then all null)
LABEL_COLUMNS = ("subject_id", "prediction_time", "boolean_value")
SPLITS = ("train", "tuning", "held_out")
BIRTH, DEATH = "MEDS_BIRTH", "MEDS_DEATH"


@dataclass
class Problems:
    """Counted warnings: how many rows/subjects hit each recoverable fault, with one example each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, n: int = 1, example: str = "") -> None:
        if n:
            self.counts[key] += n
            self.examples.setdefault(key, example)

    def summary(self) -> dict[str, dict[str, object]]:
        return {k: {"count": int(n), "example": self.examples.get(k, "")} for k, n in sorted(self.counts.items())}

    def lines(self) -> list[str]:
        return [f"{k}: {n}" + (f" (e.g. {self.examples[k]})" if self.examples.get(k) else "")
                for k, n in sorted(self.counts.items())]


@dataclass
class Timeline:
    """One subject's events, time-sorted; `static` holds the codes of null-time rows."""

    subject_id: int
    static: list[str]
    birth: np.datetime64 | None
    times: np.ndarray  # datetime64[us], non-decreasing
    codes: list[str]
    values: np.ndarray  # float64, NaN where the row has no numeric_value


def split_files(meds_dir: str | Path, split: str) -> list[Path]:
    folder = Path(meds_dir) / "data" / split
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        have = sorted(p.name for p in (Path(meds_dir) / "data").glob("*") if p.is_dir())
        raise FileNotFoundError(
            f"MEDS split {split!r}: no parquet files in {folder} (splits found under "
            f"{Path(meds_dir) / 'data'}: {have or 'none'}; MEDS expects {list(SPLITS)})"
        )
    return files


def read_table(path: Path, required: tuple[str, ...] = REQUIRED_COLUMNS, optional: tuple[str, ...] = ()) -> pa.Table:
    """Read only the needed columns of one parquet file; missing columns raise naming the file."""
    try:
        names = pq.read_schema(path).names
    except Exception as e:
        raise ValueError(f"{path} is not a readable parquet file: {e}") from None
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(f"{path}: missing MEDS column(s) {missing}; required {list(required)}, found {names}")
    return pq.read_table(path, columns=[*required, *(c for c in optional if c in names)])


def meds_aligned(table: pa.Table, schema: str, source: object) -> pa.Table:
    """`table` cast to the `meds` package's schema `schema` (DataSchema, LabelSchema, ...), which also
    checks its null rules; a table it cannot align raises naming `source`."""
    try:
        import meds
        from flexible_schema import SchemaValidationError, TableValidationError
    except ImportError:
        raise ImportError("the MEDS schemas need the `meds` package: pip install 'gptlab[ehr]'") from None
    try:
        return getattr(meds, schema).align(table)
    except (SchemaValidationError, TableValidationError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"{source}: not a valid MEDS table ({schema} of meds {meds.__version__}): {e}") from None


def _check_not_null(table: pa.Table, column: str, source: Path) -> None:
    n = table[column].null_count
    if n:
        first = pc.index(pc.is_null(table[column]), True).as_py()
        raise ValueError(f"{source}: {n} row(s) with a null {column!r} (first at row {first}); MEDS requires a "
                         f"{column} on every row: fix or drop these rows upstream")


def read_split(meds_dir: str | Path, split: str, problems: Problems) -> pa.Table:
    """All rows of one split as (subject_id int64, time timestamp[us], code string, numeric_value
    float64), sorted by subject then time with static rows first."""
    tables = []
    for path in split_files(meds_dir, split):
        t = read_table(path, optional=("numeric_value",))
        for col in ("subject_id", "code"):
            _check_not_null(t, col, path)
        if "numeric_value" not in t.column_names:  # MEDS: an absent numeric_value is all null
            t = t.append_column("numeric_value", pa.nulls(t.num_rows, pa.float32()))
        t = meds_aligned(t, "DataSchema", path).select(list(DATA_COLUMNS))
        tables.append(t.set_column(3, "numeric_value", pc.cast(t["numeric_value"], pa.float64())))
    table = pa.concat_tables(tables)
    # NaT (static rows) is int64's minimum, so a stable lexsort puts static rows first
    order = np.lexsort((table["time"].to_numpy(zero_copy_only=False).view(np.int64), table["subject_id"].to_numpy()))
    if not np.array_equal(order, np.arange(table.num_rows)):
        moved = int((order != np.arange(table.num_rows)).sum())
        problems.add("unsorted_rows_sorted", moved, f"{split}: rows not ordered by (subject_id, time)")
        table = table.take(order)
    return table


def read_subject_splits(meds_dir: str | Path) -> dict[int, str] | None:
    path = Path(meds_dir) / "metadata" / "subject_splits.parquet"
    if not path.exists():
        return None
    t = meds_aligned(read_table(path, ("subject_id", "split")), "SubjectSplitSchema", path)
    return dict(zip(t["subject_id"].to_pylist(), t["split"].to_pylist()))


def read_code_names(meds_dir: str | Path) -> dict[str, str]:
    """code → description from metadata/codes.parquet (empty when absent)."""
    path = Path(meds_dir) / "metadata" / "codes.parquet"
    if not path.exists():
        return {}
    t = read_table(path, ("code", "description"))
    return {c: d for c, d in zip(t["code"].to_pylist(), t["description"].to_pylist()) if c and d}


def read_dataset(meds_dir: str | Path, problems: Problems) -> dict[str, pa.Table]:
    """train/tuning/held_out tables; a subject in two splits is an error, split-file mismatches and
    subjects listed in subject_splits without events are counted."""
    meds_dir = Path(meds_dir)
    if not (meds_dir / "data").is_dir():
        raise FileNotFoundError(f"{meds_dir} is not a MEDS dataset: no data/ folder (run `make ehr-data` for the "
                                f"MIMIC-IV demo)")
    tables = {s: read_split(meds_dir, s, problems) for s in SPLITS}
    seen: dict[int, str] = {}
    for split, t in tables.items():
        for sid in np.unique(t["subject_id"].to_numpy()):
            if int(sid) in seen:
                raise ValueError(f"{meds_dir}: subject {sid} appears in both {seen[int(sid)]!r} and {split!r}")
            seen[int(sid)] = split
    listed = read_subject_splits(meds_dir)
    if listed is not None:
        wrong = [s for s, sp in listed.items() if s in seen and seen[s] != sp]
        problems.add("subject_splits_disagrees_with_data_folder", len(wrong),
                     f"subject {wrong[0]}" if wrong else "")
        empty = [s for s in listed if s not in seen]
        problems.add("listed_subjects_without_events", len(empty), f"subject {empty[0]}" if empty else "")
    return tables


def iter_timelines(table: pa.Table, problems: Problems | None = None) -> Iterator[Timeline]:
    """One Timeline per subject of a sorted split table (see read_split)."""
    sids = table["subject_id"].to_numpy()
    times = table["time"].to_numpy(zero_copy_only=False)
    codes = table["code"].to_pylist()
    values = table["numeric_value"].to_numpy(zero_copy_only=False).astype(np.float64)
    bounds = np.flatnonzero(np.diff(sids)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(sids)]):
        t = times[lo:hi]
        static_mask = np.isnat(t)
        static = [codes[i] for i in range(lo, hi) if static_mask[i - lo]]
        if static and problems is not None:
            problems.add("null_time_rows_as_static_prefix", len(static), f"subject {sids[lo]}: {static[0]}")
        idx = np.flatnonzero(~static_mask) + lo
        birth = next((times[i] for i in idx if codes[i] == BIRTH), None)
        keep = [i for i in idx if codes[i] != BIRTH]
        if not keep and problems is not None:
            problems.add("subjects_without_timed_events_skipped", 1, f"subject {sids[lo]}")
        if keep:
            yield Timeline(int(sids[lo]), static, birth, times[keep], [codes[i] for i in keep], values[keep])


def read_labels(path: str | Path) -> pa.Table:
    """A MEDS label file: subject_id, prediction_time (timestamp[us]) and boolean_value, nulls refused."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"label file not found: {path}")
    return validate_labels(read_table(path, LABEL_COLUMNS), path)


def validate_labels(t: pa.Table, source: object) -> pa.Table:
    """Binary labels (subject_id, prediction_time, boolean_value) with no nulls, aligned to the MEDS
    LabelSchema (subject_id int64, prediction_time timestamp[us], boolean_value bool)."""
    missing = [c for c in LABEL_COLUMNS if c not in t.column_names]
    if missing:
        raise ValueError(f"{source}: missing label column(s) {missing}; required {list(LABEL_COLUMNS)}")
    t = t.select(list(LABEL_COLUMNS))
    for col in LABEL_COLUMNS:
        _check_not_null(t, col, source)
    return meds_aligned(t, "LabelSchema", source)


def dataset_sha256(meds_dir: str | Path) -> str:
    """Hash of every data parquet file and the split list: a changed source triggers a new prepare."""
    meds_dir = Path(meds_dir)
    digest = hashlib.sha256()
    for path in sorted((meds_dir / "data").rglob("*.parquet")) + [meds_dir / "metadata" / "subject_splits.parquet"]:
        if path.exists():
            digest.update(str(path.relative_to(meds_dir)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()
