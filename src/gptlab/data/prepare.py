"""Prepare: text → token ids → train.bin / val.bin (np.memmap) + meta.json.

meta.json is written last and records the source's sha256 and the tokenizer's config, so a
half-written folder is never mistaken for a complete one and a changed source or tokenizer
triggers a fresh prepare instead of silently training on stale ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.errors import MissingFile, UserError
from gptlab.tokenizers import Tokenizer, tokenizer_for_data

FORMAT_VERSION = 1


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 halves disk and page-cache use; ids above 65,535 need uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def text_files(path: str | Path) -> list[Path]:
    """The .txt files a `data.path` names: the file itself, or every .txt under a folder (sorted)."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise MissingFile(f"data folder {path} holds no .txt files")
        return files
    raise MissingFile(f"data path not found: {path} (give a text file or a folder of .txt files)")


def read_text(path: str | Path) -> tuple[str, str]:
    """The concatenated text of `path` and its sha256; clear errors for non-UTF-8 or empty input.

    The hash is of the joined text itself (separators included), so moving text from one file of a
    folder into the next, or adding an empty file, changes it as it changes the tokens."""
    digest = hashlib.sha256()
    parts = []
    for i, f in enumerate(text_files(path)):
        raw = f.read_bytes()
        digest.update(b"\n" if i else b"")
        digest.update(raw)
        try:
            parts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise UserError(
                f"{f} is not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 4]!r}); "
                f"convert it, e.g. `iconv -f latin1 -t utf-8`"
            ) from None
    text = "\n".join(parts)
    if not text.strip():
        raise UserError(f"data path {path} contains no text")
    return text, digest.hexdigest()


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp), then rename tmp onto path. The temporary name is unique, so two runs preparing
    the same folder at once each rename a whole file of their own instead of sharing (and
    truncating) one temporary file, and a failed write leaves no temporary file behind."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bin(path: Path, ids: list[int] | np.ndarray, dtype: np.dtype) -> int:
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size and arr.max() >= np.iinfo(dtype).max + 1:
        raise ValueError(f"token id {arr.max()} does not fit {dtype}")
    _write_atomic(path, lambda p: arr.astype(dtype).tofile(p))
    return int(arr.size)


def write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    meta = {"format_version": FORMAT_VERSION, **meta}
    text = json.dumps(meta, indent=1, ensure_ascii=False)
    _write_atomic(out_dir / "meta.json", lambda p: p.write_text(text, encoding="utf-8"))


def read_meta(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingFile(f"{path} not found: the data folder was never prepared (or not completely)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is corrupt ({e}); delete the folder to prepare it again") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} holds a JSON {type(meta).__name__}, not gptlab's meta object; delete the folder "
                         f"to prepare it again")
    return meta


def check_bin(out_dir: str | Path, meta: dict[str, Any], split: str) -> np.dtype:
    """The dtype of `<split>.bin`, once the file is shown to hold exactly the `<split>_tokens` ids
    meta.json counted: a missing, cut-short or foreign bin is an error naming it, never read as data."""
    out_dir = Path(out_dir)
    path, meta_path = out_dir / f"{split}.bin", out_dir / "meta.json"
    try:
        dtype = np.dtype(meta["dtype"])
    except (KeyError, TypeError):
        dtype = None
    if dtype is None or dtype.kind != "u":
        raise UserError(f"{meta_path}: dtype={meta.get('dtype')!r} is not an unsigned integer dtype such as "
                         f"'uint16' or 'uint32'; delete the folder to prepare it again")
    if not path.exists():
        raise MissingFile(f"token file not found: {path}")
    tokens, size = meta.get(f"{split}_tokens"), path.stat().st_size
    if not isinstance(tokens, int) or size != tokens * dtype.itemsize:
        raise UserError(f"{path} holds {size} bytes but {meta_path} counts {split}_tokens={tokens!r} of {dtype} "
                         f"({dtype.itemsize} bytes each): the folder is incomplete or mixes two prepares; delete it "
                         f"to prepare it again")
    return dtype


@dataclass
class _Source:
    """What one kind of source hands the shared prepare: its identity and a writer per split."""

    meta: dict[str, Any]  # what identifies the source; the first keys of meta.json
    train_text: str | list[str]  # what a learnt tokenizer (BPE) is fitted on
    full_text: Callable[[], str]  # the whole corpus, read only by kinds that need it (the char set)
    write_split: Callable[[str, Path, Tokenizer, np.dtype], int]  # ("train"|"val", bin path, ...) → tokens
    extra_meta: dict[str, Any] = field(default_factory=dict)  # written after val_fraction


def _prepare(out_dir: str | Path, tokenizer: dict[str, Any], val_fraction: float,
             load: Callable[[], _Source]) -> dict[str, Any]:
    """The one prepare for every source: clear meta.json (an interrupted prepare must not look
    complete), load the source, build the tokenizer through the registry, write train.bin and
    val.bin, then meta.json last."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    source = load()
    tok = tokenizer_for_data(tokenizer, source.train_text, source.full_text)
    dtype = dtype_for_vocab(tok.vocab_size)
    tok.save(out_dir / "tokenizer.json")
    counts = {f"{split}_tokens": source.write_split(split, out_dir / f"{split}.bin", tok, dtype)
              for split in ("train", "val")}
    meta = {**source.meta, "tokenizer_config": dict(tokenizer), "tokenizer": tok.to_spec(),
            "vocab_size": tok.vocab_size, "dtype": dtype.name, "val_fraction": val_fraction,
            **source.extra_meta, **counts}
    write_meta(out_dir, meta)
    return meta


def prepare_text(
    source: str | Path, out_dir: str | Path, tokenizer: dict[str, Any], val_fraction: float = 0.1
) -> dict[str, Any]:
    """Tokenize `source` (file or folder of .txt) into out_dir; first (1 - val_fraction) is train."""

    def load() -> _Source:
        text, sha = read_text(source)
        n = int(len(text) * (1.0 - val_fraction))
        parts = {"train": text[:n], "val": text[n:]}

        def write(split: str, path: Path, tok: Tokenizer, dtype: np.dtype) -> int:
            return write_bin(path, tok.fast_encoder()(parts[split]), dtype)

        meta = {"source": str(Path(source).expanduser().resolve()), "source_sha256": sha}
        return _Source(meta, parts["train"], lambda: text, write)

    return _prepare(out_dir, tokenizer, val_fraction, load)


def is_up_to_date(out_dir: str | Path, source: str | Path, tokenizer: dict[str, Any], val_fraction: float) -> bool:
    """True when out_dir holds a complete prepare of this very source with this tokenizer config."""
    out_dir = Path(out_dir)
    try:
        meta = read_meta(out_dir)
    except (FileNotFoundError, ValueError):
        return False
    if meta.get("format_version") != FORMAT_VERSION or meta.get("tokenizer_config") != dict(tokenizer):
        return False
    if meta.get("val_fraction") != val_fraction or not bins_match(out_dir, meta):
        return False
    return meta.get("source_sha256") == read_text(source)[1]


def bins_match(out_dir: Path, meta: dict[str, Any], splits: tuple[str, ...] = ("train", "val")) -> bool:
    """True when every split's bin holds what meta.json counts (see check_bin)."""
    try:
        for split in splits:
            check_bin(out_dir, meta, split)
    except (FileNotFoundError, ValueError):
        return False
    return True


def ensure_prepared(
    source: str | Path, out_dir: str | Path, tokenizer: dict[str, Any], val_fraction: float = 0.1
) -> dict[str, Any]:
    """Prepare unless an identical prepare is already on disk; return its meta."""
    if is_up_to_date(out_dir, source, tokenizer, val_fraction):
        return read_meta(out_dir)
    print(f"[gptlab] preparing {source} → {out_dir} (tokenizer {tokenizer.get('kind')})")
    return prepare_text(source, out_dir, tokenizer, val_fraction)


# ---- Hugging Face `datasets` ---------------------------------------------------------------------
# nanoGPT's openwebtext prepare, with what it leaves out: any dataset/split/text column, every
# tokenizer, a seeded held-out set of whole documents, uint32 for large vocabularies, an atomic
# write and a meta.json that notices a changed dataset or tokenizer.

_WORKER_TOKENIZERS: dict[str, Any] = {}
HF_FILE_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def load_hf_dataset(name: str, config: str | None = None, split: str = "train"):
    """One split of a `datasets` dataset: a folder written by `save_to_disk`, a local data folder or
    file (json/csv/parquet/text), or a Hub name (from the local cache, or downloaded when online)."""
    import datasets

    if not sys.stderr.isatty():  # a log file, CI or SLURM: tqdm's redrawn bars are only noise there
        datasets.disable_progress_bars()
    path = Path(name).expanduser()
    if path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "state.json")):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise UserError(f"data.split={split!r} is not in {path}; splits: {sorted(ds)}")
            ds = ds[split]
        return ds
    source, files = name, {}
    if path.is_file():  # load_dataset reads a folder of data files or a Hub name; one file needs its format named
        source = HF_FILE_FORMATS.get(path.suffix.lower())
        if source is None:
            raise UserError(f"data.name={name!r} is a file, but not one of {sorted(HF_FILE_FORMATS)}")
        files = {"data_files": str(path)}
    try:
        return datasets.load_dataset(source, config, split=split, **files)
    except (FileNotFoundError, ConnectionError, ValueError) as e:
        raise UserError(
            f"data.name={name!r} (config {config!r}, split {split!r}) could not be loaded: not a local dataset "
            f"folder or file, and not in the Hugging Face cache (offline?). {type(e).__name__}: {e}"
        ) from None


def _encode_documents(batch: dict[str, list], spec: str, text_column: str) -> dict[str, list]:
    """datasets.map worker: ids of each document + the separator (the tokenizer is built once per process)."""
    from gptlab.tokenizers import tokenizer_from_spec

    if spec not in _WORKER_TOKENIZERS:
        tok = tokenizer_from_spec(json.loads(spec))
        sep = [tok.eot_token_id] if tok.eot_token_id is not None else tok.encode_ordinary("\n")
        _WORKER_TOKENIZERS[spec] = (tok.fast_encoder(), sep)
    encode, sep = _WORKER_TOKENIZERS[spec]
    ids = [encode(text) + sep for text in batch[text_column]]
    return {"ids": ids, "len": [len(i) for i in ids]}


def _write_split(path: Path, tokenized, dtype: np.dtype) -> int:
    """Concatenate a tokenized split into one memmap, batch by batch (never the whole split in RAM)."""
    total = int(np.sum(tokenized["len"], dtype=np.int64))

    def write(tmp: Path) -> None:
        arr = np.memmap(tmp, dtype=dtype, mode="w+", shape=(max(total, 1),))
        pos = 0
        for batch in tokenized.with_format("numpy", columns=["ids"]).iter(batch_size=1024):
            chunk = np.concatenate(list(batch["ids"])) if len(batch["ids"]) else np.empty(0, dtype)
            arr[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        arr.flush()
        del arr
        if total == 0:
            tmp.write_bytes(b"")

    _write_atomic(path, write)
    return total


def _check_text_column(ds, name: str, split: str, text_column: str) -> None:
    if text_column not in ds.column_names:
        raise UserError(f"data.text_column={text_column!r} is not a column of {name!r}; columns: {ds.column_names}")
    if getattr(ds.features[text_column], "dtype", None) not in ("string", "large_string"):
        raise UserError(f"data.text_column={text_column!r} of {name!r} holds {ds.features[text_column]}, not text; "
                         f"columns: {ds.features}")
    if nulls := ds.data.column(text_column).null_count:  # Arrow counts them without reading the text
        raise UserError(f"data.text_column={text_column!r} of {name!r} has {nulls} null documents; drop or fill them")
    if len(ds) < 2:
        raise UserError(f"{name!r} split {split!r} has {len(ds)} documents: need ≥ 2 (one for validation)")


def prepare_hf(name: str, out_dir: str | Path, tokenizer: dict[str, Any], *, config: str | None = None,
               split: str = "train", text_column: str = "text", val_fraction: float = 0.0005,
               num_proc: int = 8, split_seed: int = 2357) -> dict[str, Any]:
    """Tokenize one split of a `datasets` dataset with num_proc processes into out_dir; a seeded
    val_fraction of its documents (at least one) becomes val.bin. Documents end with the tokenizer's
    end-of-text token (a newline for tokenizers without one)."""

    def load() -> _Source:
        ds = load_hf_dataset(name, config, split)
        _check_text_column(ds, name, split, text_column)
        parts = ds.train_test_split(test_size=val_fraction, seed=split_seed, shuffle=True)
        docs = {"train": parts["train"], "val": parts["test"]}

        def write(split_name: str, path: Path, tok: Tokenizer, dtype: np.dtype) -> int:
            tokenized = docs[split_name].map(
                _encode_documents, batched=True, num_proc=num_proc if num_proc > 1 else None,
                remove_columns=docs[split_name].column_names, desc=f"tokenizing {split_name}",
                fn_kwargs={"spec": json.dumps(tok.to_spec()), "text_column": text_column})
            return _write_split(path, tokenized, dtype)

        meta = {"source": f"hf:{name}" + (f"/{config}" if config else "") + f":{split}",
                "source_fingerprint": ds._fingerprint,
                "source_bytes": sum(len(t.encode("utf-8")) for t in ds[text_column]),
                "text_column": text_column}
        extra = {"split_seed": split_seed, "documents": {k: len(v) for k, v in docs.items()}}
        return _Source(meta, docs["train"][text_column], lambda: "\n".join(ds[text_column]), write, extra)

    return _prepare(out_dir, tokenizer, val_fraction, load)


def ensure_prepared_hf(name: str, out_dir: str | Path, tokenizer: dict[str, Any], *, config: str | None = None,
                       split: str = "train", text_column: str = "text", val_fraction: float = 0.0005,
                       num_proc: int = 8, split_seed: int = 2357) -> dict[str, Any]:
    """prepare_hf unless out_dir already holds this dataset version, split and tokenizer."""
    out_dir = Path(out_dir)
    try:
        meta = read_meta(out_dir)
    except (FileNotFoundError, ValueError):
        meta = None
    if meta is not None and bins_match(out_dir, meta):
        wanted = {"format_version": FORMAT_VERSION, "tokenizer_config": dict(tokenizer), "text_column": text_column,
                  "val_fraction": val_fraction, "split_seed": split_seed,
                  "source_fingerprint": load_hf_dataset(name, config, split)._fingerprint}
        if all(meta.get(k) == v for k, v in wanted.items()):
            return meta
    print(f"[gptlab] preparing hf dataset {name} → {out_dir} (tokenizer {tokenizer.get('kind')})")
    return prepare_hf(name, out_dir, tokenizer, config=config, split=split, text_column=text_column,
                      val_fraction=val_fraction, num_proc=num_proc, split_seed=split_seed)
