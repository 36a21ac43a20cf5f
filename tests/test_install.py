"""`pip install .` into a fresh venv, then the gptlab-* commands from a folder that is not the checkout:
the configs must come with the package (pkg://gptlab.conf), not from the source tree."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPTS = ["gptlab-train", "gptlab-generate", "gptlab-analyze", "gptlab-ehr-eval", "gptlab-vocab-report",
           "gptlab-export", "gptlab-serve"]


def run(*args, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # never the checkout's src
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env={**env, "WANDB_MODE": "offline"},
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_pip_install_then_gptlab_train_from_an_unrelated_folder(tmp_path):
    # a copy of the package sources only (no conf symlink, no tests): what a wheel is built from
    src = tmp_path / "src-copy"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    # no pip/setuptools of its own: the build uses this environment's setuptools, through deps.pth
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = Path(run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    # the dependencies (torch, lightning, hydra, ...) from this interpreter's site-packages, appended after
    # the venv's own: no download, and gptlab itself only from the fresh install
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-build-isolation", src,
        cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(py, "-c", "import gptlab.conf; print(gptlab.conf.CONF_DIR)", cwd=elsewhere).strip()
    assert Path(where).is_relative_to(site) and (Path(where) / "model" / "gpt2_base.yaml").is_file()
    assert all((venv / "bin" / s).is_file() for s in SCRIPTS)
    out = run(venv / "bin" / "gptlab-train", "model=tiny", "trainer.max_steps=5", "eval_interval=5",
              "data.val_batches=1", "sample_after_training=0", "trainer.enable_progress_bar=false",
              cwd=elsewhere)
    assert "[gptlab] done: 5 steps" in out
    assert list(elsewhere.glob("outputs/*/*/checkpoints/last.ckpt"))  # relative paths: under the folder it ran in
    # generate's decoding group ships in its own package folder (gptlab.conf_generate) and composes from it
    job = run(venv / "bin" / "gptlab-generate", "--cfg", "job", "decoding=greedy", cwd=elsewhere)
    assert "decoding:\n  strategy: greedy" in job
