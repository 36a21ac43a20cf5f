"""Kill and resume without loss, crash-safe checkpoints, safe loading, NaN/inf guard, determinism.

The subprocess tests run the real `python train.py`; a fault-injection callback (tests/faults.py)
pauses the run at a known step so that the signal lands mid-step at the same place every time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptlab.callbacks.safety import AtomicCheckpointIO, NonFiniteLossError
from gptlab.checkpoint import load_checkpoint, load_gpt_from_lightning_ckpt, safe_torch_load, save_atomic
from gptlab.entrypoints.generate import run_generate
from gptlab.entrypoints.train import train
from gptlab.hf import from_pretrained, save_pretrained
from gptlab.lit_module import GPTLitModule
from gptlab.model import GPT
from tests.conftest import ROOT, TINY_RUN, compose_generate_cfg, compose_train_cfg, read_metrics, tiny_gpt

# 30 steps, a checkpoint every 10; dropout on, so a resume must also restore the torch RNG
RUN = (
    *TINY_RUN,
    "trainer.max_steps=30",
    "eval_interval=10",
    "data.val_batches=2",
    "model.dropout=0.1",
    "optim.warmup_steps=5",
    "optim.lr_decay_steps=30",
    "optim.lr=3e-3",
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir) -> dict:
    """One uninterrupted run of RUN, in-process: what every interrupted run must reproduce."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = train(compose_train_cfg(run_dir, data_dir, RUN))
    return {**result, "train": read_metrics(run_dir, "train/loss"), "val": read_metrics(run_dir, "val/loss")}


def same_losses(rows: list[tuple[int, float]], reference_rows: list[tuple[int, float]]) -> bool:
    """Same steps, and losses equal to 1e-4. Another batch or dropout mask moves a loss by ~1e-1;
    the tolerance only allows the last float bits, which can differ between a pytest process and a
    train.py subprocess (see experiments/reliability/README.md, Determinism)."""
    return [s for s, _ in rows] == [s for s, _ in reference_rows] and all(
        abs(a - b) <= 1e-4 for (_, a), (_, b) in zip(rows, reference_rows)
    )


def start_train(run_dir: Path, data_dir: Path, *overrides: str) -> subprocess.Popen:
    args = [
        sys.executable,
        "train.py",
        *RUN,
        f"hydra.run.dir={run_dir}",
        f"paths.data_dir={data_dir}",
        *overrides,
    ]
    return subprocess.Popen(
        args,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline"},
    )


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(
                f"train.py exited ({proc.returncode}) before {path.name} appeared:\n{out[-2000:]}\n{err[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.05)


def pause_at(step: int, marker: Path, release: Path | None = None) -> list[str]:
    args = [
        "+callbacks.pause._target_=tests.faults.PauseAtStep",
        f"+callbacks.pause.step={step}",
        f"+callbacks.pause.marker={marker}",
    ]
    return args + ([f"+callbacks.pause.release={release}"] if release else [])


def test_same_seed_gives_bitwise_identical_cpu_losses(reference, tmp_path, data_dir):
    again = train(compose_train_cfg(tmp_path / "run", data_dir, RUN))
    assert read_metrics(tmp_path / "run", "train/loss") == reference["train"]  # exact float equality, all 30 steps
    assert read_metrics(tmp_path / "run", "val/loss") == reference["val"]
    assert again["final_val_loss"] == reference["final_val_loss"]
    other_seed = train(
        compose_train_cfg(tmp_path / "seed2", data_dir, [*RUN, "seed=2", "trainer.max_steps=2"])
    )
    assert read_metrics(tmp_path / "seed2", "train/loss")[1] != reference["train"][1]  # the seed matters
    assert other_seed["steps"] == 2


def test_sigkill_mid_step_then_resume_auto_matches_an_uninterrupted_run(reference, tmp_path, data_dir):
    runs, marker = tmp_path / "runs", tmp_path / "paused"
    proc = start_train(runs / "first", data_dir, *pause_at(15, marker))
    wait_for_file(marker, proc)  # step 15, between backward and the update; last.ckpt is step 10's
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(runs / "first" / "checkpoints" / "last.ckpt")["global_step"] == 10

    resumed = subprocess.run(
        [
            sys.executable,
            "train.py",
            *RUN,
            f"hydra.run.dir={runs / 'second'}",
            f"paths.data_dir={data_dir}",
            "resume=auto",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {runs / 'first' / 'checkpoints' / 'last.ckpt'}" in resumed.stdout
    assert load_checkpoint(runs / "second" / "checkpoints" / "last.ckpt")["global_step"] == 30
    # steps 10..29 again, the same batches and dropout masks: same losses as the uninterrupted run; the
    # resumed log starts with the first run's rows before step 10 (callbacks/history.py): every step once
    train_rows = read_metrics(runs / "second", "train/loss")
    assert same_losses(train_rows[-20:], reference["train"][10:]) and same_losses(train_rows, reference["train"])
    assert same_losses(read_metrics(runs / "second", "val/loss")[-2:], reference["val"][1:])  # after steps 20, 30
    assert read_metrics(runs / "second", "val/loss")[-1][1] == pytest.approx(reference["final_val_loss"], abs=1e-4)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_or_sigterm_saves_a_checkpoint_after_the_current_step_and_it_resumes_exactly(
    sig, reference, tmp_path, data_dir
):
    marker, release = tmp_path / "paused", tmp_path / "release"
    proc = start_train(tmp_path / "run", data_dir, *pause_at(15, marker, release))
    wait_for_file(marker, proc)
    proc.send_signal(sig)  # lands mid-step 15
    release.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-3000:]  # Lightning's exit status after Ctrl-C
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"{sig.name}: finishing the current step" in err
    assert f"saved {last} at step 16" in out + err
    assert load_checkpoint(last)["global_step"] == 16  # step 15 was completed, not lost or half-applied

    resumed = train(compose_train_cfg(tmp_path / "resumed", data_dir, [*RUN, f"ckpt_path={last}"]))
    assert resumed["steps"] == 30
    train_rows = read_metrics(tmp_path / "resumed", "train/loss")  # the interrupted run's rows, then its own
    assert same_losses(train_rows[-14:], reference["train"][16:])
    # the rows the interrupted run wrote (steps 0..15, the interrupted step's too) lead the resumed log
    assert [r[0] for r in train_rows] == list(range(30))
    assert same_losses([r for r in train_rows if r[0] < 16], reference["train"][:16])
    assert resumed["final_val_loss"] == pytest.approx(reference["final_val_loss"], abs=1e-4)


def test_kill_during_a_checkpoint_write_leaves_the_previous_last_ckpt_loadable(tmp_path, data_dir):
    marker = tmp_path / "writing"
    plugin = f"trainer.plugins=[{{_target_:tests.faults.SlowWriteCheckpointIO,step:20,marker:'{marker}'}}]"
    proc = start_train(tmp_path / "run", data_dir, plugin)
    wait_for_file(marker, proc)  # step 20's last.ckpt is half written
    proc.kill()
    proc.communicate()
    folder = tmp_path / "run" / "checkpoints"
    partial = list(folder.glob(".last.ckpt.*.tmp"))
    assert len(partial) == 1
    with pytest.raises(ValueError, match="truncated or corrupt"):
        safe_torch_load(partial[0])  # the kill really hit a write in progress
    model, ckpt = load_gpt_from_lightning_ckpt(folder / "last.ckpt")
    assert ckpt["global_step"] == 10 and all(torch.isfinite(p).all() for p in model.parameters())


def test_a_failed_write_keeps_the_old_file_and_says_why(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_atomic({"state_dict": {"w": torch.ones(3)}}, path)

    def disk_full(obj, f):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(
        OSError, match=rf"could not write checkpoint {path} .*No space left on device.*MiB free"
    ):
        save_atomic({"state_dict": {"w": torch.zeros(3)}}, path)
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left behind


# ---- compiled / uncompiled, DDP / single device -----------------------------------------------------
def state_dict_saved_by(wrap: str, gpt: GPT) -> dict[str, torch.Tensor]:
    """A LightningModule-like holder's state_dict when its GPT was torch.compile'd, or when the
    holder was wrapped in DataParallel: real wrappers name the keys (`_orig_mod.`, `module.`)."""
    holder = torch.nn.Module()
    holder.model = torch.compile(gpt) if wrap == "compiled" else gpt
    return (torch.nn.DataParallel(holder) if wrap == "dataparallel" else holder).state_dict()


@pytest.mark.parametrize("wrap", ["compiled", "dataparallel"])
def test_wrapped_model_checkpoints_load_and_resume(wrap, reference, tmp_path, data_dir):
    plain, ckpt = load_gpt_from_lightning_ckpt(reference["last_ckpt"])
    ckpt["state_dict"] = state_dict_saved_by(wrap, plain)
    assert next(iter(ckpt["state_dict"])).startswith(
        {"compiled": "model._orig_mod.", "dataparallel": "module.model."}[wrap]
    )
    path = tmp_path / "wrapped.ckpt"
    save_atomic(ckpt, path)

    loaded, _ = load_gpt_from_lightning_ckpt(path)
    idx = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(idx)[0], plain(idx)[0])
    resumed = train(
        compose_train_cfg(tmp_path / "run", data_dir, [*RUN, "trainer.max_steps=32", f"ckpt_path={path}"])
    )
    assert resumed["steps"] == 32
    assert all(
        k.startswith("model.transformer.") or k == "model.lm_head.weight"
        for k in load_checkpoint(resumed["last_ckpt"])["state_dict"]
    )


def test_a_prepare_killed_midway_is_redone_not_trusted(tmp_path, monkeypatch):
    """meta.json is written last, so a folder without it is never mistaken for a complete prepare."""
    from gptlab.data import prepare

    source = ROOT / "src" / "gptlab" / "assets" / "data" / "tinyshakespeare.txt"
    real_write_bin = prepare.write_bin

    def killed_after_train_bin(path, ids, dtype):
        if path.name == "val.bin":
            raise KeyboardInterrupt
        return real_write_bin(path, ids, dtype)

    monkeypatch.setattr(prepare, "write_bin", killed_after_train_bin)
    with pytest.raises(KeyboardInterrupt):
        prepare.ensure_prepared(source, tmp_path, {"kind": "char"})
    assert (tmp_path / "train.bin").exists() and not (tmp_path / "meta.json").exists()
    monkeypatch.setattr(prepare, "write_bin", real_write_bin)
    assert not prepare.is_up_to_date(tmp_path, source, {"kind": "char"}, 0.1)
    meta = prepare.ensure_prepared(source, tmp_path, {"kind": "char"})
    assert meta["val_tokens"] == 111_540 and (tmp_path / "val.bin").stat().st_size == 2 * 111_540


# ---- NaN / inf loss -------------------------------------------------------------------------------
def poison(monkeypatch, steps: dict[int, float], seen: dict[int, torch.Tensor] | None = None) -> None:
    """Multiply the loss of the given global steps by NaN or inf, as a diverging run would; `seen`
    collects a weight matrix at the start of every step."""
    real = GPTLitModule.training_step

    def training_step(self, batch, batch_idx):
        step = self.trainer.global_step
        if seen is not None:
            seen[step] = self.model.transformer.h[0].attn.c_attn.weight.detach().clone()
        loss = real(self, batch, batch_idx)
        return loss * steps[step] if step in steps else loss

    monkeypatch.setattr(GPTLitModule, "training_step", training_step)


def test_nan_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(monkeypatch, tmp_path, data_dir):
    poison(monkeypatch, {13: float("nan")})
    with pytest.raises(NonFiniteLossError, match=r"at global step 13 \(micro-batch losses: nan\)") as err:
        train(compose_train_cfg(tmp_path / "run", data_dir, RUN))
    assert "mode=stop" in str(err.value) and "callbacks.nonfinite_guard.mode=skip" in str(err.value)
    folder = tmp_path / "run" / "checkpoints"
    assert [p.name for p in folder.iterdir() if p.name != "last.ckpt"] == [
        next(p.name for p in folder.glob("best-step10-*.ckpt"))
    ]  # nothing was written after step 10
    model, ckpt = load_gpt_from_lightning_ckpt(folder / "last.ckpt")
    assert ckpt["global_step"] == 10 and all(torch.isfinite(p).all() for p in model.parameters())


def test_inf_loss_in_skip_mode_drops_that_update_and_the_run_goes_on(monkeypatch, tmp_path, data_dir):
    weights: dict[int, torch.Tensor] = {}
    poison(monkeypatch, {13: float("inf")}, weights)
    with pytest.warns(
        UserWarning, match=r"at global step 13 \(micro-batch losses: inf\): skipped this update"
    ):
        result = train(
            compose_train_cfg(tmp_path / "run", data_dir, [*RUN, "callbacks.nonfinite_guard.mode=skip"])
        )
    assert result["steps"] == 30 and torch.isfinite(torch.tensor(result["final_val_loss"]))
    assert torch.equal(weights[13], weights[14])  # step 13 changed nothing
    assert not torch.equal(weights[12], weights[13]) and not torch.equal(weights[14], weights[15])
    model, ckpt = load_gpt_from_lightning_ckpt(result["last_ckpt"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert {"skipped": [13]} in ckpt["callbacks"].values()  # a resumed run keeps counting towards max_skips


def test_skip_mode_stops_after_max_skips(monkeypatch, tmp_path, data_dir):
    poison(monkeypatch, {3: float("nan"), 4: float("nan")})
    overrides = [*RUN, "callbacks.nonfinite_guard.mode=skip", "callbacks.nonfinite_guard.max_skips=1"]
    with pytest.warns(UserWarning, match="global step 3"):
        with pytest.raises(
            NonFiniteLossError,
            match=r"global step 4 .*after 1 skipped steps \(\[3\]\), the limit max_skips=1.*max_skips \(now 1\)",
        ):
            train(compose_train_cfg(tmp_path / "run", data_dir, overrides))


def test_inf_gradient_with_a_finite_loss_stops_before_the_update(monkeypatch, tmp_path, data_dir):
    """An overflow in the backward pass alone (the loss is finite) is caught by the gradient norm."""
    real = GPTLitModule.training_step

    def training_step(self, batch, batch_idx):
        loss = real(self, batch, batch_idx)
        if self.trainer.global_step == 13:
            self.model.lm_head.weight.register_hook(lambda g: g * float("inf"))
        return loss

    monkeypatch.setattr(GPTLitModule, "training_step", training_step)
    with pytest.raises(NonFiniteLossError, match=r"at global step 13 \(micro-batch losses: \d+\.\d+\)"):
        train(compose_train_cfg(tmp_path / "run", data_dir, RUN))
    model, ckpt = load_gpt_from_lightning_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 10 and all(torch.isfinite(p).all() for p in model.parameters())


def test_clipping_reuses_the_guards_gradient_norm_and_matches_lightnings_own(monkeypatch, tmp_path, data_dir):
    """With the guard on, clipping by norm reads the gradients once (the guard's norm) and gives the
    same weights, bit for bit, as Lightning's clipping without the guard; max norm 0.05 clips every step."""
    real_norm, norms = torch._foreach_norm, []

    def counted(tensors, *args, **kwargs):  # one call per (device, dtype) group: one per step here
        per_tensor = real_norm(tensors, *args, **kwargs)
        norms.append(torch.linalg.vector_norm(torch.stack(per_tensor)))
        return per_tensor

    monkeypatch.setattr(torch, "_foreach_norm", counted)  # the guard's get_total_norm and clip_grad_norm_
    clip = [*RUN, "trainer.max_steps=6", "eval_interval=100", "trainer.gradient_clip_val=0.05"]
    shared = train(compose_train_cfg(tmp_path / "guard", data_dir, clip))
    assert len(norms) == 6 and min(float(n) for n in norms) > 0.05
    del norms[:]
    lightning = train(compose_train_cfg(tmp_path / "no-guard", data_dir, [*clip, "~callbacks.nonfinite_guard"]))
    assert len(norms) == 6  # Lightning's clip_grad_norm_, once a step
    a, b = (load_gpt_from_lightning_ckpt(r["last_ckpt"])[0].state_dict() for r in (shared, lightning))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- loading never runs code ------------------------------------------------------------------------
class RunsCode:
    """Unpickling this runs a shell command: what a booby-trapped checkpoint from the internet does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def booby_trapped(path: Path, marker: Path, real_ckpt: str) -> Path:
    """A real gptlab checkpoint with one extra entry that runs code when unpickled."""
    ckpt = load_checkpoint(real_ckpt)
    torch.save({**ckpt, "callbacks": RunsCode(marker)}, path)
    return path


def hf_folder_with(weights: Path, folder: Path) -> Path:
    save_pretrained(tiny_gpt(block_size=8, vocab_size=20, n_layer=1, n_head=1, n_embd=8), folder)
    (folder / "model.safetensors").unlink()
    shutil.copy(weights, folder / "pytorch_model.bin")
    return folder


LOADERS = {
    "load_checkpoint": lambda path, tmp, data_dir: load_checkpoint(path),
    "generate.py": lambda path, tmp, data_dir: run_generate(
        compose_generate_cfg([f"ckpt_path={path}", "max_new_tokens=2", "device=cpu"])
    ),
    "train.py resume": lambda path, tmp, data_dir: train(
        compose_train_cfg(tmp / "run", data_dir, [*RUN, f"ckpt_path={path}"])
    ),
    "Lightning CheckpointIO": lambda path, tmp, data_dir: AtomicCheckpointIO().load_checkpoint(path),
    "hf.from_pretrained": lambda path, tmp, data_dir: from_pretrained(hf_folder_with(path, tmp / "hf")),
}


@pytest.mark.parametrize("loader", LOADERS)
def test_a_pickle_that_runs_code_is_refused_and_never_executed(loader, reference, tmp_path, data_dir):
    armed = booby_trapped(tmp_path / "evil.ckpt", tmp_path / "armed", reference["last_ckpt"])
    torch.load(armed, weights_only=False)  # the trap works: plain unpickling runs the command
    assert (tmp_path / "armed").exists()

    evil = booby_trapped(tmp_path / "evil.ckpt", tmp_path / "pwned", reference["last_ckpt"])
    with pytest.raises(
        ValueError,
        match=r"refusing to load .*(evil\.ckpt|pytorch_model\.bin): it holds a Python object \(posix\.system\) that could run code",
    ):
        LOADERS[loader](evil, tmp_path, data_dir)
    assert not (tmp_path / "pwned").exists()


def test_single_device_and_ddp_checkpoints_resume_each_other(reference, tmp_path, data_dir):
    """A 2-process DDP run (CPU, gloo) resumes the single-device run's last.ckpt; its own
    last.ckpt then resumes on a single device. Same keys either way: Lightning saves the
    unwrapped module, and the data stream continues from the saved batch count."""
    ddp = subprocess.run(
        [
            sys.executable,
            "train.py",
            *RUN,
            "trainer=ddp_cpu",
            "trainer.max_steps=36",
            "eval_interval=6",
            f"ckpt_path={reference['last_ckpt']}",
            f"hydra.run.dir={tmp_path / 'ddp'}",
            f"paths.data_dir={data_dir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    ddp_ckpt = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.ckpt")
    assert ddp_ckpt["global_step"] == 36
    assert ddp_ckpt["state_dict"].keys() == load_checkpoint(reference["last_ckpt"])["state_dict"].keys()

    single = train(
        compose_train_cfg(
            tmp_path / "single",
            data_dir,
            [*RUN, "trainer.max_steps=40", f"ckpt_path={tmp_path / 'ddp' / 'checkpoints' / 'last.ckpt'}"],
        )
    )
    assert single["steps"] == 40 and torch.isfinite(torch.tensor(single["final_val_loss"]))


@pytest.mark.slow
def test_compiled_training_checkpoints_resume_uncompiled_and_back(tmp_path, data_dir):
    """Real torch.compile (tens of seconds on CPU): the model is compiled in place, so no
    `_orig_mod.` reaches the checkpoint, and either kind resumes as the other."""
    short = [*RUN, "trainer.max_steps=4", "eval_interval=2"]
    compiled = train(compose_train_cfg(tmp_path / "compiled", data_dir, [*short, "model.compile=true"]))
    keys = load_checkpoint(compiled["last_ckpt"])["state_dict"]
    assert not any("_orig_mod" in k for k in keys)
    plain = train(
        compose_train_cfg(
            tmp_path / "plain",
            data_dir,
            [*short, "trainer.max_steps=6", f"ckpt_path={compiled['last_ckpt']}"],
        )
    )
    assert plain["steps"] == 6
    again = train(
        compose_train_cfg(
            tmp_path / "again",
            data_dir,
            [*short, "trainer.max_steps=8", "model.compile=true", f"ckpt_path={plain['last_ckpt']}"],
        )
    )
    assert again["steps"] == 8
