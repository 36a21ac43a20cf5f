import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gptlab.data import GPTDataModule, ensure_prepared, prepare_text, read_meta
from gptlab.data.datamodule import FixedWindows, RandomWindows
from gptlab.data.prepare import _write_atomic, dtype_for_vocab, write_bin
from gptlab.paths import SHIPPED_SHAKESPEARE
from gptlab.tokenizers import load_tokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40


@pytest.mark.parametrize("tokenizer", [{"kind": "char"}, {"kind": "tiktoken", "encoding": "gpt2"}])
def test_prepare_round_trip(tmp_path, tokenizer):
    src = tmp_path / "in.txt"
    src.write_text(TEXT)
    meta = prepare_text(src, tmp_path / "out", tokenizer, val_fraction=0.1)
    tok = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    n = int(len(TEXT) * 0.9)
    for split, part in (("train", TEXT[:n]), ("val", TEXT[n:])):
        ids = np.memmap(tmp_path / "out" / f"{split}.bin", dtype=meta["dtype"], mode="r")
        assert tok.decode(ids.tolist()) == part
        assert meta[f"{split}_tokens"] == len(ids)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tok.vocab_size
    on_disk = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert on_disk["source_sha256"] and on_disk["tokenizer"] == tok.to_spec()


def test_non_ascii_vocabularies_save_and_load_under_a_non_utf8_locale(tmp_path):
    """tokenizer.json and meta.json are UTF-8 whatever the locale (Windows' cp1252, LC_ALL=C without
    UTF-8 mode): the locale's encoding could not write "🤗", nor read back BPE's UTF-8 file."""
    (tmp_path / "in.txt").write_text("héllo wörld 🤗 " * 40, encoding="utf-8")
    script = (
        "import sys; from gptlab.data import ensure_prepared; from gptlab.tokenizers import load_tokenizer\n"
        "for kind in ({'kind': 'char'}, {'kind': 'bpe', 'vocab_size': 300, 'progress': False}):\n"
        "    out = sys.argv[1] + '/' + kind['kind']\n"
        "    ensure_prepared(sys.argv[1] + '/in.txt', out, kind)\n"
        "    tok, text = load_tokenizer(out + '/tokenizer.json'), 'w\\u00f6rld \\U0001f917'\n"  # an ASCII command line
        "    assert tok.decode(tok.encode(text)) == text\n"
        "    assert ensure_prepared(sys.argv[1] + '/in.txt', out, kind)['vocab_size'] > 0\n"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True,
                          encoding="utf-8")
    assert done.returncode == 0, done.stderr[-2000:]


def test_uint32_when_vocab_exceeds_uint16(tmp_path):
    assert dtype_for_vocab(65535) == np.uint16 and dtype_for_vocab(65536) == np.uint32
    ids = [0, 65535, 65536, 100_000]
    write_bin(tmp_path / "x.bin", ids, dtype_for_vocab(100_001))
    assert np.memmap(tmp_path / "x.bin", dtype=np.uint32, mode="r").tolist() == ids
    with pytest.raises(ValueError, match="does not fit"):
        write_bin(tmp_path / "y.bin", ids, np.dtype(np.uint16))


def _write_bin_after(barrier, path: str, ids: np.ndarray) -> None:
    barrier.wait()
    write_bin(Path(path), ids, np.dtype(np.uint16))


def test_two_runs_writing_the_same_bin_at_once_both_succeed(tmp_path):
    """Two runs preparing one folder together (a parallel sweep's first jobs) shared one temporary
    name: the slower one's rename found its file already moved and crashed."""
    ctx = multiprocessing.get_context("fork")  # no re-import of torch and Lightning per writer
    ids, barrier = np.arange(4_000_000) % 60_000, ctx.Barrier(2)
    writers = [ctx.Process(target=_write_bin_after, args=(barrier, str(tmp_path / "train.bin"), ids)) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    assert np.array_equal(np.fromfile(tmp_path / "train.bin", dtype=np.uint16), ids)
    assert [p.name for p in tmp_path.iterdir()] == ["train.bin"]  # no temporary file left


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    with pytest.raises(ValueError, match="does not fit"):
        write_bin(tmp_path / "x.bin", [70_000], np.dtype(np.uint16))

    def interrupted(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _write_atomic(tmp_path / "x.bin", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_ensure_prepared_reruns_only_when_source_or_tokenizer_change(tmp_path):
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_text(TEXT)
    ensure_prepared(src, out, {"kind": "char"})
    stamp = (out / "train.bin").stat().st_mtime_ns
    ensure_prepared(src, out, {"kind": "char"})
    assert (out / "train.bin").stat().st_mtime_ns == stamp  # unchanged: not re-done
    src.write_text(TEXT + "Zounds!\n")
    meta = ensure_prepared(src, out, {"kind": "char"})
    assert "Z" in load_tokenizer(out / "tokenizer.json").to_spec()["chars"]
    assert meta["train_tokens"] == int(len(TEXT + "Zounds!\n") * 0.9)
    (out / "meta.json").unlink()  # an interrupted prepare has no meta.json → prepared again
    assert ensure_prepared(src, out, {"kind": "char"})["train_tokens"] == meta["train_tokens"]


@pytest.mark.parametrize("content, match", [(b"", "no text"), (b"caf\xe9", "not valid UTF-8")])
def test_bad_text_input_errors_name_the_file(tmp_path, content, match):
    src = tmp_path / "bad.txt"
    src.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        prepare_text(src, tmp_path / "out", {"kind": "char"})
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        prepare_text(tmp_path / "missing.txt", tmp_path / "out", {"kind": "char"})


def test_folder_of_text_files(tmp_path):
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "a.txt").write_text("hello " * 50)
    (tmp_path / "corpus" / "sub" / "b.txt").write_text("world " * 50)
    meta = prepare_text(tmp_path / "corpus", tmp_path / "out", {"kind": "char"})
    assert meta["train_tokens"] + meta["val_tokens"] == len("hello " * 50) + 1 + len("world " * 50)


def test_text_moved_between_files_of_a_folder_is_prepared_again(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus.mkdir()
    (corpus / "a.txt").write_text("to be or not to be, " * 20 + "that is")
    (corpus / "b.txt").write_text(" the question. " * 20)
    ensure_prepared(corpus, out, {"kind": "char"})
    (corpus / "a.txt").write_text("to be or not to be, " * 20)  # the same bytes, split at another place
    (corpus / "b.txt").write_text("that is" + " the question. " * 20)
    meta = ensure_prepared(corpus, out, {"kind": "char"})
    tok = load_tokenizer(out / "tokenizer.json")
    ids = [np.fromfile(out / f"{split}.bin", dtype=meta["dtype"]).tolist() for split in ("train", "val")]
    assert tok.decode(ids[0] + ids[1]) == "\n".join(p.read_text() for p in sorted(corpus.glob("*.txt")))


def test_random_windows_shift_by_one_in_range_and_reproducible():
    ids = np.arange(1000, dtype=np.uint16)
    stream = RandomWindows(ids, block_size=16, batch_size=8, seed=3)
    x, y = stream.batch(5)
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))  # y is x shifted by one
    assert x.min() >= 0 and y.max() <= 999
    assert torch.equal(stream.batch(5)[0], x)  # a pure function of (seed, rank, n)
    other_rank = RandomWindows(ids, 16, 8, seed=3, rank=1)
    assert not torch.equal(other_rank.batch(5)[0], x)
    resumed = iter(RandomWindows(ids, 16, 8, seed=3, start=5))
    assert torch.equal(next(resumed)[0], x)


def test_fixed_validation_windows_cover_the_split_and_shard_across_ranks():
    ids = np.arange(500, dtype=np.uint16)
    full = FixedWindows(ids, block_size=10, batch_size=4, num_batches=6)
    assert len(full) == 6 and full[0][0][0, 0] == 0 and full[5][1][-1, -1] == 499
    shards = [FixedWindows(ids, 10, 4, 6, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) + len(shards[1]) == 6
    assert torch.equal(shards[1][0][0], full[1][0])


def test_datamodule_reads_prepared_shakespeare(tmp_path):
    out = tmp_path / "shakespeare"
    dm = GPTDataModule(out, block_size=32, batch_size=4, val_batches=3,
                       prepare=lambda: ensure_prepared(SHIPPED_SHAKESPEARE, out, {"kind": "char"}))
    dm.prepare_data()
    dm.setup("fit")
    assert read_meta(out)["vocab_size"] == 65
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 32) and int(x.max()) < 65
    assert len(dm.val_dataloader()) == 3
    dm.load_state_dict({"train_batches_consumed": 7})
    assert dm.state_dict() == {"train_batches_consumed": 7}


def test_split_shorter_than_a_window_is_a_clear_error(tmp_path):
    src = tmp_path / "short.txt"
    src.write_text("abcdefghij" * 5)
    out = tmp_path / "out"
    dm = GPTDataModule(out, block_size=32, batch_size=2, prepare=lambda: ensure_prepared(src, out, {"kind": "char"}))
    dm.prepare_data()
    with pytest.raises(ValueError, match=r"val.bin holds 5 tokens.*block_size"):
        dm.setup("fit")


def test_a_bin_that_disagrees_with_meta_is_reprepared_or_named(tmp_path):
    """A cut-short or foreign bin, a bad dtype or a meta.json that is no object: ensure_prepared
    prepares again, and setup names the file instead of training on it or failing inside numpy."""
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_text(TEXT)
    meta = ensure_prepared(src, out, {"kind": "char"})
    dm = GPTDataModule(out, block_size=8, batch_size=2)
    with open(out / "train.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match=r"train\.bin holds 100 bytes but .*meta\.json counts train_tokens="):
        dm.setup("fit")
    assert ensure_prepared(src, out, {"kind": "char"}) == meta
    assert (out / "train.bin").stat().st_size == 2 * meta["train_tokens"]
    (out / "val.bin").write_bytes(b"\x01")  # not even a whole uint16
    with pytest.raises(ValueError, match=r"val\.bin holds 1 bytes"):
        dm.setup("fit")
    (out / "meta.json").write_text(json.dumps({**meta, "dtype": "float99"}))
    with pytest.raises(ValueError, match=r"meta\.json: dtype='float99' is not an unsigned integer dtype"):
        dm.setup("fit")
    (out / "meta.json").write_text("[]")
    with pytest.raises(ValueError, match=r"meta\.json holds a JSON list"):
        dm.setup("fit")
    assert ensure_prepared(src, out, {"kind": "char"}) == meta


def test_an_empty_train_split_is_the_block_size_error(tmp_path):
    src, out = tmp_path / "one.txt", tmp_path / "out"
    src.write_text("x")  # 90% of one character: train.bin is an empty file, which numpy cannot map
    ensure_prepared(src, out, {"kind": "char"})
    with pytest.raises(ValueError, match=r"train\.bin holds 0 tokens, fewer than one window"):
        GPTDataModule(out, block_size=4, batch_size=2).setup("fit")


def test_prepare_with_own_bpe_matches_its_encoder(tmp_path):
    from gptlab.tokenizers import BPETokenizer

    src = tmp_path / "in.txt"
    src.write_text(TEXT + "<|endoftext|> is text here\n")
    meta = prepare_text(src, tmp_path / "out", {"kind": "bpe", "vocab_size": 300, "progress": False})
    tok = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    assert isinstance(tok, BPETokenizer) and meta["vocab_size"] == tok.vocab_size <= 300
    n = int(len(src.read_text()) * 0.9)
    val = np.memmap(tmp_path / "out" / "val.bin", dtype=meta["dtype"], mode="r").tolist()
    assert val == tok.encode_ordinary(src.read_text()[n:])  # the fast (tiktoken) path gives our ids
    assert tok.decode(val) == src.read_text()[n:]


def test_each_text_corpus_prepares_into_its_own_folder(tmp_path):
    """data=text names its folder by the corpus path: two corpora never share (or race for) one
    folder, and switching back to a corpus finds its bins still there."""
    from gptlab.data.build import data_folder, to_plain
    from tests.conftest import compose_train_cfg

    def folder(path=None, overrides=("data=text", "data/tokenizer=char")):
        cfg = compose_train_cfg(tmp_path / "run", tmp_path / "data", [*overrides, *([f"data.path={path}"] * bool(path))])
        return data_folder(to_plain(cfg.data), cfg.paths.data_dir)

    a, b = folder(tmp_path / "a" / "corpus.txt"), folder(tmp_path / "b" / "corpus.txt")
    assert a != b and a.parent.parent == b.parent.parent == tmp_path / "data"
    assert a.parent.name.startswith("text-corpus.txt-") and a.name == "char"
    assert folder(tmp_path / "a" / "." / "corpus.txt") == a  # the same file, spelled differently
    shakespeare = folder(overrides=["data=shakespeare_char"])
    assert shakespeare == tmp_path / "data" / "shakespeare" / "char"  # named datasets keep their folder
