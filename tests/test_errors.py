"""Bad input → a clear error naming the file, key or value and what is allowed, through the entry
points a user calls: train() (what `python train.py` runs), run_generate() (`python generate.py`),
Hydra's compose and gptlab.hf.from_pretrained. experiments/reliability/README.md lists every case."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gptlab.entrypoints.generate import run_generate
from gptlab.entrypoints.train import train
from gptlab.errors import UserError
from gptlab.hf import from_pretrained, save_pretrained
from tests.conftest import TINY_RUN, compose_generate_cfg, compose_train_cfg, tiny_gpt

TINY = (*TINY_RUN, "trainer.max_steps=2", "eval_interval=2", "data.val_batches=1")


class Case:
    """What a test case can reach: its tmp folder, a trained checkpoint, train() and run_generate()."""

    def __init__(self, tmp: Path, data_dir: Path, ckpt: Path):
        self.tmp, self.data_dir, self.ckpt = tmp, data_dir, ckpt

    def train(self, *overrides: str, data_dir: Path | None = None) -> dict:
        return train(compose_train_cfg(self.tmp / "run", data_dir or self.tmp / "data", [*TINY, *overrides]))

    def train_text(self, text: str | bytes, *overrides: str) -> dict:
        """Train on a local text file (data=text, char tokenizer)."""
        path = self.tmp / "corpus.txt"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return self.train("data=text", f"data.path={path}", "data/tokenizer=char", *overrides)

    def generate(self, *overrides: str) -> list[str]:
        return run_generate(
            compose_generate_cfg([f"ckpt_path={self.ckpt}", "max_new_tokens=5", "device=cpu", *overrides])
        )

    def file(self, name: str, content: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content)
        return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-step tiny char model: (its last.ckpt, the prepared data folder)."""
    root = tmp_path_factory.mktemp("trained")
    result = train(compose_train_cfg(root / "run", root / "data", TINY))
    return Path(result["last_ckpt"]), root / "data"


@pytest.fixture
def case(tmp_path, trained) -> Case:
    return Case(tmp_path, trained[1], trained[0])


def hf_folder(tmp: Path, n_positions: int = 32) -> Path:
    folder = tmp / "hf"
    save_pretrained(tiny_gpt(block_size=n_positions, vocab_size=50, n_layer=1, n_embd=16), folder)
    return folder


def truncated(case: Case) -> Path:
    data = case.ckpt.read_bytes()
    return case.file("truncated.ckpt", data[: len(data) // 3])


# (id, action, exception type, regex the message must match). The regex names the file/key/value
# and the allowed choices; re.DOTALL so messages may span lines.
CASES: list[tuple[str, Callable[[Case], object], type[BaseException], str]] = [
    # --- data ---
    (
        "data_file_missing",
        lambda c: c.train("data=text", f"data.path={c.tmp}/nope.txt"),
        FileNotFoundError,
        r"data path not found: .*nope\.txt \(give a text file or a folder of \.txt files\)",
    ),
    (
        "data_folder_without_txt",
        lambda c: (c.tmp.joinpath("empty").mkdir(), c.train("data=text", f"data.path={c.tmp}/empty")),
        FileNotFoundError,
        r"data folder .*empty holds no \.txt files",
    ),
    ("empty_text", lambda c: c.train_text(" \n\n "), ValueError, r"data path .*corpus\.txt contains no text"),
    (
        "non_utf8_text",
        lambda c: c.train_text(b"caf\xe9 au lait"),
        ValueError,
        r"corpus\.txt is not valid UTF-8 \(byte 3: b'\\xe9 au'\); convert it, e\.g\. `iconv",
    ),
    (
        "text_shorter_than_one_window",
        lambda c: c.train_text("To be, or not to be"),
        ValueError,
        r"train\.bin holds 17 tokens, fewer than one window of block_size \+ 1 = 33",
    ),
    (
        "val_split_smaller_than_one_window",
        lambda c: c.train_text("All the world's a stage. " * 20, "data.val_fraction=0.05"),
        ValueError,
        r"val\.bin holds 25 tokens, fewer than one window of block_size \+ 1 = 33.*data\.val_fraction",
    ),
    (
        "val_fraction_out_of_range",
        lambda c: c.train_text("abc" * 100, "data.val_fraction=1.5"),
        ValueError,
        r"data\.val_fraction must be in \(0, 1\), got 1\.5",
    ),
    (
        "data_vocab_larger_than_model_vocab",
        lambda c: c.train("model.vocab_size=10", data_dir=c.data_dir),
        ValueError,
        r"has vocab_size 65 but model\.vocab_size is 10: set model\.vocab_size=null .* or ≥ 65",
    ),
    (
        "unknown_tokenizer_kind",
        lambda c: c.train_text("abc" * 100, "data.tokenizer.kind=wordpiece"),
        ValueError,
        r"data\.tokenizer\.kind='wordpiece' is not one of: bpe, char, tiktoken",
    ),
    (
        "unknown_tokenizer_shorthand",
        lambda c: c.train("data.tokenizer=wordpiece"),
        ValueError,
        r"data\.tokenizer='wordpiece': no .*wordpiece\.yaml; choose one of \['bpe', 'char', 'ehr', 'tiktoken'\]",
    ),
    # --- configuration ---
    (
        "unknown_model_preset",
        lambda c: c.train("model=gpt5"),
        Exception,
        r"Could not find 'model/gpt5'.*Available options in 'model'.*gpt2_small",
    ),
    (
        "unknown_config_group_option",
        lambda c: c.train("trainer=tpu"),
        Exception,
        r"Could not find 'trainer/tpu'.*Available options in 'trainer'.*ddp_cpu",
    ),
    (
        "n_embd_not_divisible_by_n_head",
        lambda c: c.train("model.n_head=3", data_dir=c.data_dir),
        ValueError,
        r"n_embd=32 is not divisible by n_head=3; choose n_head among the divisors of 32",
    ),
    (
        "resume_value",
        lambda c: c.train("resume=yes"),
        ValueError,
        r"resume='yes': use resume=auto .* or ckpt_path=<a \.ckpt>; null starts fresh",
    ),
    (
        "nonfinite_guard_mode",
        lambda c: c.train("callbacks.nonfinite_guard.mode=ignore", data_dir=c.data_dir),
        Exception,
        r"NonFiniteGuard mode='ignore'; choose one of \['stop', 'skip'\].*full_key: callbacks\.nonfinite_guard",
    ),
    ("eval_interval_zero", lambda c: c.train("eval_interval=0"), ValueError,
     r"eval_interval=0: give an integer ≥ 1 \(optimizer steps between validations"),
    ("accumulate_grad_batches_zero", lambda c: c.train("trainer.accumulate_grad_batches=0"), ValueError,
     r"trainer\.accumulate_grad_batches=0: give an integer ≥ 1 \(micro-batches per optimizer step\)"),
    ("lr_zero", lambda c: c.train("optim.lr=0", "optim.min_lr=0"), ValueError,
     r"optim\.lr=0(\.0)?: the peak learning rate must be > 0"),
    ("min_lr_above_lr", lambda c: c.train("optim.min_lr=0.01"), ValueError,
     r"optim\.min_lr=0\.01: give a value in \[0, optim\.lr=0\.001\]"),
    (
        "max_epochs_of_an_endless_stream",
        lambda c: c.train("trainer.max_steps=-1", "trainer.max_epochs=1"),
        ValueError,
        r"trainer\.max_steps=-1 with trainer\.max_epochs=1 would train forever: .* no epoch ever ends\. Set "
        r"trainer\.max_steps",
    ),
    # --- checkpoints ---
    (
        "resume_checkpoint_missing",
        lambda c: c.train(f"ckpt_path={c.tmp}/nope.ckpt", data_dir=c.data_dir),
        UserError,
        r"checkpoint .*nope\.ckpt not found",
    ),
    (
        "resume_truncated_checkpoint",
        lambda c: c.train(f"ckpt_path={truncated(c)}", data_dir=c.data_dir),
        ValueError,
        r"truncated\.ckpt is not a readable PyTorch checkpoint \(truncated or corrupt\?\)",
    ),
    (
        "generate_corrupt_checkpoint",
        lambda c: c.generate(f"ckpt_path={c.file('noise.ckpt', os.urandom(4096))}"),
        ValueError,
        r"noise\.ckpt is not a readable PyTorch checkpoint",
    ),
    (
        "generate_truncated_checkpoint",
        lambda c: c.generate(f"ckpt_path={truncated(c)}"),
        ValueError,
        r"truncated\.ckpt is not a readable PyTorch checkpoint \(truncated or corrupt\?\)",
    ),
    (
        "not_a_lightning_checkpoint",
        lambda c: (
            torch.save({"weights": torch.ones(2)}, c.tmp / "plain.pt"),
            c.generate(f"ckpt_path={c.tmp}/plain.pt"),
        ),
        ValueError,
        r"plain\.pt is not a Lightning checkpoint: no 'state_dict' \(found \['weights'\]\)",
    ),
    (
        "checkpoint_of_another_model",
        lambda c: c.train("model.n_layer=3", f"ckpt_path={c.ckpt}", data_dir=c.data_dir),
        ValueError,
        r"last\.ckpt was trained with another model \(n_layer=2 there but 3 here\); resume with the same",
    ),
    # --- Hugging Face weights ---
    (
        "hf_block_size_beyond_position_table",
        lambda c: from_pretrained(hf_folder(c.tmp), block_size=64),
        ValueError,
        r"block_size=64 is larger than the checkpoint's position table \(n_positions=32 in .*config\.json\); use at most 32",
    ),
    (
        "hf_folder_missing",
        lambda c: from_pretrained(c.tmp / "no-such-model"),
        FileNotFoundError,
        r"no-such-model",
    ),
    (
        "hf_vocab_smaller_than_the_data",
        lambda c: c.train(f"init_from={hf_folder(c.tmp)}", data_dir=c.data_dir),
        ValueError,
        r"has vocab_size 65 but init_from=.*hf has 50 token embeddings: train it on data tokenized as it was",
    ),
    # --- generation ---
    (
        "prompt_outside_char_vocab",
        lambda c: c.generate("prompt='naïve 🙂'"),
        ValueError,
        r"characters \['ï', '🙂'\] are not in this char vocabulary of 65 characters",
    ),
    (
        "greedy_with_several_samples",
        lambda c: c.generate("decoding=greedy", "num_samples=3"),
        UserError,
        r"num_samples=3 with greedy decoding: greedy decoding is deterministic, so every sample would be the same",
    ),
    ("empty_prompt", lambda c: c.generate("prompt=''"), ValueError, r"the prompt encodes to no tokens"),
    (
        "prompt_file_missing",
        lambda c: c.generate(f"prompt=FILE:{c.tmp}/prompt.txt"),
        FileNotFoundError,
        r"prompt file not found: .*prompt\.txt",
    ),
    (
        "no_model_given",
        lambda c: c.generate("ckpt_path=null"),
        ValueError,
        r"give ckpt_path=<a \.ckpt from train\.py> or init_from=<HF GPT-2 folder or name>",
    ),
    (
        "temperature_negative",
        lambda c: c.generate("temperature=-0.5"),
        ValueError,
        r"temperature must be >= 0 \(0 means greedy\), got -0\.5",
    ),
    ("top_p_zero", lambda c: c.generate("top_p=0"), ValueError, r"top_p must be in \(0, 1\] .*got 0"),
    (
        "top_p_above_one",
        lambda c: c.generate("top_p=1.5"),
        ValueError,
        r"top_p must be in \(0, 1\] .*got 1\.5",
    ),
    ("top_k_below_one", lambda c: c.generate("top_k=0"), ValueError, r"top_k must be an integer >= 1 .*got 0"),
    (
        "max_new_tokens_negative",
        lambda c: c.generate("max_new_tokens=-1"),
        ValueError,
        r"max_new_tokens must be an integer >= 0, got -1",
    ),
    # --- output folder ---
    (
        "output_folder_is_a_file",
        lambda c: c.train(f"paths.run_dir={c.file('taken', b'x')}/run", data_dir=c.data_dir),
        OSError,
        r"output folder .*taken/run is not writable \(.*\); choose another with hydra\.run\.dir=\.\.\.",
    ),
]


@pytest.mark.parametrize(("name", "action", "error", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_error(case, name, action, error, pattern):
    from gptlab.errors import user_error_in

    with pytest.raises(error) as raised:
        action(case)
    assert re.search(pattern, str(raised.value), re.DOTALL), str(raised.value)
    if error is not OSError and not re.match(r"Could not find", pattern):
        assert user_error_in(raised.value) is not None, f"{type(raised.value).__name__} is no UserError: a traceback"


def test_prompt_longer_than_block_size_is_cropped_with_a_warning(case, capsys):
    texts = case.generate("prompt=" + "ab" * 40, "max_new_tokens=3")
    err = capsys.readouterr().err
    assert "warning: the prompt has 80 tokens; the model sees only the last 32 (block_size)" in err
    assert len(texts[0]) == 83  # the full prompt is printed, plus 3 new characters


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: see the EROFS test")
def test_read_only_output_folder(case):
    folder = case.tmp / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(OSError, match=r"output folder .*ro/run is not writable \(Permission denied\)"):
        case.train(f"paths.run_dir={folder}/run", data_dir=case.data_dir)


def test_read_only_file_system(case, monkeypatch):
    """What a read-only mount reports (EROFS); simulated, as root may write anywhere else here."""

    def erofs(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", erofs)
    with pytest.raises(OSError, match=r"output folder .*run is not writable \(Read-only file system\)"):
        case.train(data_dir=case.data_dir)


def test_disk_too_full_for_one_checkpoint_fails_before_training(case, monkeypatch):
    usage = shutil.disk_usage(case.tmp)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=100_000))
    with pytest.raises(
        OSError, match=r"output folder .*run has 0 MiB free, less than one checkpoint of this model"
    ):
        case.train(data_dir=case.data_dir)


def test_disk_full_during_a_checkpoint_names_the_file_and_keeps_the_last_one(case, monkeypatch):
    real_save = torch.save
    saves = []

    def fills_the_disk(obj, f, *args, **kwargs):
        saves.append(obj["global_step"])
        if obj["global_step"] >= 4:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/3: file write failed"
            )
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(
        OSError,
        match=r"could not write checkpoint .*step4.*file write failed\); .* MiB free in .*The previous .* is intact",
    ):
        case.train("trainer.max_steps=4", data_dir=case.data_dir)
    from gptlab.checkpoint import load_checkpoint

    assert load_checkpoint(case.tmp / "run" / "checkpoints" / "last.ckpt")["global_step"] == 2


# --- one error class: `error: <message>`, exit status 2, no traceback; bugs keep theirs ---------

def test_a_user_error_prints_one_line_and_exits_2(capsys, monkeypatch):
    from gptlab.errors import UserError, user_errors

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @user_errors
    def main():
        raise UserError("max_new_tokens must be an integer >= 0, got -5")

    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: max_new_tokens must be an integer >= 0, got -5\n"


def test_a_bug_keeps_its_traceback_and_hydra_full_error_shows_everything(monkeypatch):
    from gptlab.errors import UserError, user_errors

    with pytest.raises(KeyError):
        user_errors(lambda: {}["bug"])()
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(UserError):
        user_errors(lambda: (_ for _ in ()).throw(UserError("bad")))()


def test_unknown_trainer_key_names_the_nearest(case):
    from gptlab.errors import UserError

    with pytest.raises(UserError, match=r"^trainer\.max_step is not an option of trainer: did you mean "
                                        r"trainer\.max_steps\?$"):
        case.train("+trainer.max_step=5", data_dir=case.data_dir)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=gpt2_small", "data=shakespeare", "trainer.devices=4"],
         r"^error: this run needs about \d+\.\d GiB of memory and the machine has 1\.0 GiB of RAM available: "
         r"4 processes × .*trainer\.devices=1.*trainer=gpu"),
        (["ckpt_path=nope.ckpt"], r"^error: checkpoint nope\.ckpt not found"),
        (["trainer=ddp"], r"^error: trainer=ddp runs one process per GPU, .* use trainer=ddp_cpu"),
    ],
    ids=["design_card_on_cpu", "missing_ckpt_path", "ddp_without_gpu"],
)
def test_train_py_stops_before_the_run_folder_with_one_line(tmp_path, overrides, message):
    """The real command: exit status 2, `error: ...` alone on stderr, no data prepared, no run folder.
    (The machine is given 1 GiB of RAM so the design-card case does not depend on this one's.)"""
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "GPTLAB_DATA_DIR": str(tmp_path / "data"), "GPTLAB_RAM_AVAILABLE": str(2**30),
           "CUDA_VISIBLE_DEVICES": ""}
    env.pop("HYDRA_FULL_ERROR", None)
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={tmp_path}/run"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr
    assert re.search(message, out.stderr, re.DOTALL) and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()
