"""Prepare: text → token ids → train.bin / val.bin (np.memmap) + meta.json.

meta.json is written last and records the source's sha256 and the tokenizer's config, so a
half-written folder is never mistaken for a complete one and a changed source or tokenizer
triggers a fresh prepare instead of silently training on stale ids.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.tokenizers import CharTokenizer, TiktokenTokenizer, Tokenizer

FORMAT_VERSION = 1
ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHIPPED_SHAKESPEARE = ASSETS / "data" / "tinyshakespeare.txt"


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
            raise FileNotFoundError(f"data folder {path} holds no .txt files")
        return files
    raise FileNotFoundError(f"data path not found: {path} (give a text file or a folder of .txt files)")


def read_text(path: str | Path) -> tuple[str, str]:
    """The concatenated text of `path` and its sha256; clear errors for non-UTF-8 or empty input."""
    digest = hashlib.sha256()
    parts = []
    for f in text_files(path):
        raw = f.read_bytes()
        digest.update(raw)
        try:
            parts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{f} is not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 4]!r}); "
                f"convert it, e.g. `iconv -f latin1 -t utf-8`"
            ) from None
    text = "\n".join(parts)
    if not text.strip():
        raise ValueError(f"data path {path} contains no text")
    return text, digest.hexdigest()


def build_tokenizer(cfg: dict[str, Any], train_text: str, full_text: str) -> Tokenizer:
    """Make the tokenizer a data config asks for. BPE merges are learnt on the training split only;
    the char set is taken from the whole text (as nanoGPT does) so validation never meets an
    unknown character — the alphabet says nothing about the held-out content."""
    kind = cfg.get("kind")
    if kind == "char":
        return CharTokenizer.fit(full_text)
    if kind == "tiktoken":
        return TiktokenTokenizer(cfg.get("encoding", "gpt2"))
    if kind == "bpe":
        from gptlab.tokenizers.bpe import BPETokenizer

        options = {k: v for k, v in cfg.items() if k not in ("kind", "vocab_size")}
        return BPETokenizer.train(train_text, int(cfg["vocab_size"]), **options)
    raise ValueError(f"data.tokenizer.kind={kind!r} is not one of: char, tiktoken, bpe")


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_bin(path: Path, ids: list[int] | np.ndarray, dtype: np.dtype) -> int:
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size and arr.max() >= np.iinfo(dtype).max + 1:
        raise ValueError(f"token id {arr.max()} does not fit {dtype}")
    _write_atomic(path, lambda p: arr.astype(dtype).tofile(p))
    return int(arr.size)


def write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    meta = {"format_version": FORMAT_VERSION, **meta}
    _write_atomic(out_dir / "meta.json", lambda p: p.write_text(json.dumps(meta, indent=1, ensure_ascii=False)))


def read_meta(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / "meta.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: the data folder was never prepared (or not completely)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is corrupt ({e}); delete the folder to prepare it again") from None


def prepare_text(
    source: str | Path, out_dir: str | Path, tokenizer: dict[str, Any], val_fraction: float = 0.1
) -> dict[str, Any]:
    """Tokenize `source` (file or folder of .txt) into out_dir; first (1 - val_fraction) is train."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # an interrupted prepare must not look complete
    text, sha = read_text(source)
    n = int(len(text) * (1.0 - val_fraction))
    train_text, val_text = text[:n], text[n:]
    tok = build_tokenizer(tokenizer, train_text, text)
    dtype = dtype_for_vocab(tok.vocab_size)
    tok.save(out_dir / "tokenizer.json")
    encode = tok.fast_encoder()
    counts = {}
    for split, part in (("train", train_text), ("val", val_text)):
        counts[f"{split}_tokens"] = write_bin(out_dir / f"{split}.bin", encode(part), dtype)
    meta = {
        "source": str(Path(source).expanduser().resolve()),
        "source_sha256": sha,
        "tokenizer_config": dict(tokenizer),
        "tokenizer": tok.to_spec(),
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "val_fraction": val_fraction,
        **counts,
    }
    write_meta(out_dir, meta)
    return meta


def is_up_to_date(out_dir: str | Path, source: str | Path, tokenizer: dict[str, Any], val_fraction: float) -> bool:
    """True when out_dir holds a complete prepare of this very source with this tokenizer config."""
    out_dir = Path(out_dir)
    try:
        meta = read_meta(out_dir)
    except (FileNotFoundError, ValueError):
        return False
    if meta.get("format_version") != FORMAT_VERSION or meta.get("tokenizer_config") != dict(tokenizer):
        return False
    if meta.get("val_fraction") != val_fraction:
        return False
    if not all((out_dir / f).exists() for f in ("train.bin", "val.bin")):
        return False
    return meta.get("source_sha256") == read_text(source)[1]


def ensure_prepared(
    source: str | Path, out_dir: str | Path, tokenizer: dict[str, Any], val_fraction: float = 0.1
) -> dict[str, Any]:
    """Prepare unless an identical prepare is already on disk; return its meta."""
    if is_up_to_date(out_dir, source, tokenizer, val_fraction):
        return read_meta(out_dir)
    print(f"[gptlab] preparing {source} → {out_dir} (tokenizer {tokenizer.get('kind')})")
    return prepare_text(source, out_dir, tokenizer, val_fraction)
