"""data=hf: any `datasets` dataset (local here, never the network) → memmaps, with every tokenizer."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import tiktoken

from gptlab.data import ensure_prepared_hf, prepare_hf, read_meta
from gptlab.data.prepare import load_hf_dataset
from gptlab.entrypoints.train import train
from gptlab.paths import SHIPPED_SHAKESPEARE
from tests.conftest import compose_train_cfg

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory):
    """Tiny Shakespeare's speeches as documents, saved with save_to_disk (plus an id column)."""
    docs = [d for d in SHIPPED_SHAKESPEARE.read_text().split("\n\n") if d.strip()][:400]
    path = tmp_path_factory.mktemp("hf") / "speeches"
    datasets.Dataset.from_dict({"id": list(range(len(docs))), "text": docs}).save_to_disk(str(path))
    return path, docs


def test_tiktoken_ids_with_workers_equal_tiktoken_per_document(local_dataset, tmp_path):
    path, docs = local_dataset
    meta = prepare_hf(str(path), tmp_path / "out", {"kind": "tiktoken", "encoding": "gpt2"}, val_fraction=0.05,
                      num_proc=2)
    enc = tiktoken.get_encoding("gpt2")
    split = datasets.load_from_disk(str(path)).train_test_split(test_size=0.05, seed=2357, shuffle=True)
    for name in ("train", "val"):
        part = split["train" if name == "train" else "test"]
        expected = np.concatenate([enc.encode_ordinary(t) + [enc.eot_token] for t in part["text"]])
        got = np.fromfile(tmp_path / "out" / f"{name}.bin", dtype=np.uint16)
        assert np.array_equal(got, expected) and meta[f"{name}_tokens"] == len(expected)
    assert meta["documents"] == {"train": 380, "val": 20} and meta["dtype"] == "uint16"
    assert meta["source_bytes"] == sum(len(d.encode()) for d in docs)


def test_no_progress_bars_when_stderr_is_not_a_terminal(local_dataset, monkeypatch):
    import datasets

    from gptlab.data.prepare import load_hf_dataset

    datasets.enable_progress_bars()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    load_hf_dataset(str(local_dataset[0]))
    assert not datasets.is_progress_bar_enabled()
    datasets.enable_progress_bars()


def test_char_tokenizer_and_json_files(tmp_path):
    files = tmp_path / "jsonl"
    files.mkdir()
    (files / "part0.jsonl").write_text("".join(json.dumps({"body": f"doc {i} é"}) + "\n" for i in range(30)))
    meta = prepare_hf(str(files), tmp_path / "out", {"kind": "char"}, text_column="body", val_fraction=0.1,
                      num_proc=1)
    assert meta["tokenizer"]["kind"] == "char" and meta["train_tokens"] + meta["val_tokens"] == sum(
        len(f"doc {i} é") + 1 for i in range(30))  # + the newline that ends each document


def test_reprepares_only_when_the_dataset_or_tokenizer_changes(local_dataset, tmp_path):
    path, docs = local_dataset
    out, tok = tmp_path / "out", {"kind": "tiktoken", "encoding": "gpt2"}
    ensure_prepared_hf(str(path), out, tok, val_fraction=0.05, num_proc=1)
    mtime = (out / "train.bin").stat().st_mtime_ns
    assert ensure_prepared_hf(str(path), out, tok, val_fraction=0.05, num_proc=1) == read_meta(out)
    assert (out / "train.bin").stat().st_mtime_ns == mtime
    changed = tmp_path / "changed"
    datasets.Dataset.from_dict({"text": docs[:100]}).save_to_disk(str(changed))
    assert ensure_prepared_hf(str(changed), out, tok, val_fraction=0.05, num_proc=1)["documents"]["train"] == 95


def test_clear_errors(local_dataset, tmp_path):
    path, _ = local_dataset
    with pytest.raises(ValueError, match="text_column='content'.*columns: \\['id', 'text'\\]"):
        prepare_hf(str(path), tmp_path / "o", {"kind": "char"}, text_column="content")
    with_splits = tmp_path / "with_splits"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", "b"]})}).save_to_disk(str(with_splits))
    assert load_hf_dataset(str(with_splits))["text"] == ["a", "b"]
    with pytest.raises(ValueError, match=r"data.split='test' is not in .*splits: \['train'\]"):
        load_hf_dataset(str(with_splits), split="test")
    with pytest.raises(ValueError, match="data.name='no/such-dataset'.*not in the Hugging Face cache"):
        load_hf_dataset("no/such-dataset")


def test_one_data_file_and_columns_that_are_not_text(tmp_path):
    """data.name may be one .jsonl/.csv/.parquet/.txt file (load_dataset alone cannot read one); a
    null or non-text column is named, not an AttributeError inside a tokenizer worker."""
    one = tmp_path / "docs.jsonl"
    one.write_text("".join(json.dumps({"text": f"doc {i} é", "n": i}) + "\n" for i in range(30)))
    meta = prepare_hf(str(one), tmp_path / "out", {"kind": "char"}, val_fraction=0.1, num_proc=1)
    assert meta["documents"] == {"train": 27, "val": 3}
    with pytest.raises(ValueError, match=r"text_column='n' of .*docs\.jsonl' holds Value\('int64'\), not text"):
        prepare_hf(str(one), tmp_path / "out", {"kind": "char"}, text_column="n", num_proc=1)
    with_null = tmp_path / "null.jsonl"
    with_null.write_text(one.read_text() + json.dumps({"text": None, "n": 30}) + "\n")
    with pytest.raises(ValueError, match=r"text_column='text' of .*null\.jsonl' has 1 null documents"):
        prepare_hf(str(with_null), tmp_path / "out", {"kind": "char"}, num_proc=1)
    (tmp_path / "docs.xml").write_text("<doc/>")
    with pytest.raises(ValueError, match=r"docs\.xml' is a file, but not one of \['\.csv', '\.json'"):
        load_hf_dataset(str(tmp_path / "docs.xml"))


def test_train_with_data_hf(local_dataset, tmp_path):
    path, _ = local_dataset
    cfg = compose_train_cfg(tmp_path / "run", tmp_path / "data", [
        "data=hf", f"data.name={path}", "data.val_fraction=0.05", "data.num_proc=1", "model=tiny",
        "data/tokenizer=char", "trainer.max_steps=2", "eval_interval=2", "data.val_batches=1", "sample_after_training=0",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"])
    result = train(cfg)
    assert result["steps"] == 2
    folder = next((tmp_path / "data").iterdir())
    assert folder.name.startswith("hf-") and folder.name.endswith("-train") and "/" not in folder.name[3:]
    assert read_meta(folder / "char")["source"].startswith("hf:")
