"""The checks before a run: the decision of gptlab.preflight on fake machines (no GPU is needed to
test what a 4-GPU machine would do), and the estimate against a measured peak."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gptlab.errors import UserError
from gptlab.preflight import GiB, Machine, check_memory, estimate
from tests.conftest import compose_train_cfg

DESIGN_CARD = ["model=gpt2_small", "data=shakespeare", "trainer.devices=4"]
CPU_24G = Machine(gpu_bytes=[], ram_available=22 * GiB)


def cfg(tmp_path, *overrides):
    return compose_train_cfg(tmp_path / "run", tmp_path / "data", list(overrides))


def test_design_card_on_a_cpu_machine_stops_with_the_estimate_and_advice(tmp_path):
    with pytest.raises(UserError) as raised:
        check_memory(cfg(tmp_path, *DESIGN_CARD), CPU_24G)
    msg = str(raised.value)
    assert "4 processes × " in msg and "124.4M parameters" in msg
    for advice in ("trainer.devices=1", "trainer=ddp_cpu", "model=baby_cpu", "trainer=gpu"):
        assert advice in msg


REFUSED_BEFORE_LIGHTNING = """
import sys
from gptlab.entrypoints.train import main
try:
    main()
except SystemExit as e:
    print("exit", e.code, "lightning imported:", any(m.startswith("lightning") for m in sys.modules))
"""


def test_the_refusal_comes_before_lightning_is_imported(tmp_path):
    """The command a user typed is refused in seconds: the preflight runs before the training code
    (and Lightning's ~10 s import) is loaded."""
    argv = ["train.py", *DESIGN_CARD, f"hydra.run.dir={tmp_path}/run", f"paths.data_dir={tmp_path}/data"]
    code = f"import sys; sys.argv = {argv!r}\n" + REFUSED_BEFORE_LIGHTNING
    env = {**os.environ, "GPTLAB_RAM_AVAILABLE": str(22 * GiB), "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
    assert "exit 2 lightning imported: False" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "this run needs about" in out.stderr + out.stdout and not (tmp_path / "data").exists()


def test_design_card_on_a_4_gpu_machine_runs_one_process_per_gpu(tmp_path):
    r = check_memory(cfg(tmp_path, *DESIGN_CARD), Machine(gpu_bytes=[80 * GiB] * 4, ram_available=200 * GiB))
    assert (r["on_gpu"], r["processes"]) == (True, 4) and r["need"] < r["have"]
    r = check_memory(cfg(tmp_path, *DESIGN_CARD, "trainer=ddp"), Machine(gpu_bytes=[80 * GiB] * 4))
    assert (r["on_gpu"], r["processes"]) == (True, 4)


def test_small_gpus_get_gpu_advice(tmp_path):
    with pytest.raises(UserError, match=r"16\.0 GiB per GPU.*trainer\.precision=bf16-mixed.*trainer=fsdp"):
        check_memory(cfg(tmp_path, *DESIGN_CARD), Machine(gpu_bytes=[16 * GiB] * 4))


def test_ddp_without_a_gpu_says_ddp_cpu(tmp_path):
    with pytest.raises(UserError, match=r"^trainer=ddp runs one process per GPU, and this machine has none.*"
                                        r"trainer=ddp_cpu"):
        check_memory(cfg(tmp_path, "trainer=ddp"), CPU_24G)


def test_more_devices_than_gpus(tmp_path):
    with pytest.raises(UserError, match=r"trainer\.devices=4 asks for 4 GPUs and this machine has 2"):
        check_memory(cfg(tmp_path, "trainer.devices=4", "trainer.accelerator=gpu"), Machine(gpu_bytes=[GiB] * 2))


def test_the_default_recipe_and_ddp_cpu_fit_here(tmp_path):
    assert check_memory(cfg(tmp_path), CPU_24G)["need"] < GiB
    r = check_memory(cfg(tmp_path, "trainer=ddp_cpu"), CPU_24G)
    assert (r["on_gpu"], r["processes"]) == (False, 2)


def test_fsdp_shards_the_training_state(tmp_path):
    full = estimate(cfg(tmp_path, "model=gpt2_xl", "data=shakespeare"), 8)
    sharded = estimate(cfg(tmp_path, "model=gpt2_xl", "data=shakespeare", "trainer=fsdp"), 8)
    assert sharded["state"] == pytest.approx(full["state"] / 8)  # bf16-mixed keeps fp32 weights and state


PEAK = """
import sys, torch
from gptlab.model import GPT, GPTConfig
n_layer, n_embd, T, B, V = map(int, sys.argv[1:])
model = GPT(GPTConfig(n_layer=n_layer, n_head=n_embd // 64, n_embd=n_embd, block_size=T, vocab_size=V))
opt = torch.optim.AdamW(model.parameters())
x = torch.randint(0, V, (B, T))
for _ in range(2):
    model(x, x)[1].backward(); opt.step(); opt.zero_grad(set_to_none=True)
# VmHWM: this process image's own peak (ru_maxrss survives exec, so it would report a large parent's peak)
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024)
"""


def test_the_estimate_is_close_to_a_measured_peak(tmp_path):
    """Peak RSS of two AdamW steps (the whole process) against the estimate: within 25%."""
    args = ["4", "256", "256", "8", "8192"]
    peak = int(subprocess.run([sys.executable, "-c", PEAK, *args], capture_output=True, text=True,
                              check=True).stdout)
    c = cfg(tmp_path, "model.n_layer=4", "model.n_embd=256", "model.n_head=4", "model.block_size=256",
            "data.batch_size=8", "model.vocab_size=8192")
    assert estimate(c)["total"] == pytest.approx(peak, rel=0.25)


def test_entry_points_that_train_nothing_check_only_their_checkpoint(tmp_path):
    """ehr_eval's config has no trainer or model: Hydra's shared Preflight callback checks its
    ckpt_path and estimates no memory (it once raised on the missing trainer key at every run)."""
    from omegaconf import OmegaConf

    from gptlab.ehr.evaluate import eval_config
    from gptlab.preflight import run_checks

    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"")
    cfg = OmegaConf.create({**eval_config("synthetic_death"), "ckpt_path": str(ckpt)})
    OmegaConf.set_struct(cfg, True)  # as Hydra hands it over: a missing key raises
    assert run_checks(cfg) is None
    with pytest.raises(UserError, match="not found"):
        run_checks(OmegaConf.merge(cfg, {"ckpt_path": str(tmp_path / "missing.ckpt")}))
