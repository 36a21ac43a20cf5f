"""Issue 18's ablation: each conf/ablation/ variant changes exactly its one switch against the GPT-2
baseline, the cumulative one is the speedrun recipe, and the sweep config lists every variant."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT, compose_train_cfg

# variant → the (dotted key, value) pairs it must change, and nothing else
ONE_CHANGE = {
    "rope": {"model.position": "rope"}, "rmsnorm": {"model.norm": "rmsnorm"}, "relu2": {"model.mlp": "relu2"},
    "swiglu": {"model.mlp": "swiglu"}, "qk_norm": {"model.qk_norm": True},
    "untied": {"model.tie_embeddings": False}, "softcap": {"model.logit_softcap": 15.0},
    "zero_init": {"model.zero_init_proj": True}, "lr3e-3": {"optim.lr": 3e-3},
    "wsd": {"optim.schedule._target_": "gptlab.optim.wsd", "optim.schedule.decay_fraction": 0.4},
    # optim=muon: its optimizer and Muon's own keys (muon_lr and muon_params stay null: optim.lr, every block matrix)
    "muon": {"optim.optimizer._target_": "gptlab.optim.muon", "optim.optimizer.momentum": 0.95,
             "optim.optimizer.adjust_lr_fn": "match_rms_adamw"},
}


def _flat(cfg) -> dict:
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return {k: v for k, v in out.items() if not k.startswith(("paths.", "hydra."))}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("abl")
    return _flat(compose_train_cfg(tmp / "run", tmp / "data", ["+ablation=gpt2"]))


@pytest.mark.parametrize("variant", sorted(ONE_CHANGE))
def test_each_variant_changes_only_its_switch(variant, baseline, tmp_path):
    got = _flat(compose_train_cfg(tmp_path / "run", tmp_path / "data", [f"+ablation={variant}"]))
    changed = {k: got.get(k) for k in set(got) | set(baseline) if got.get(k) != baseline.get(k)}
    assert changed == ONE_CHANGE[variant]


def test_the_cumulative_variant_is_the_speedrun_architecture_with_adamw_and_wsd(tmp_path):
    cfg = compose_train_cfg(tmp_path / "run", tmp_path / "data", ["+ablation=speedrun"])
    ref = OmegaConf.load(ROOT / "conf" / "model" / "speedrun_cpu.yaml")
    for key in ("position", "norm", "mlp", "qk_norm", "bias", "tie_embeddings", "logit_softcap", "zero_init_proj"):
        assert cfg.model[key] == ref[key], key
    assert cfg.optim.schedule._target_ == "gptlab.optim.wsd" and cfg.optim.lr == 3e-3
    assert cfg.optim.optimizer._target_ == "gptlab.optim.adamw"  # Muon is not part of the CPU recipe


def test_the_sweep_runs_every_variant_with_three_seeds():
    sweep = OmegaConf.load(ROOT / "conf" / "hparams_search" / "speedrun_ablation.yaml")
    params = sweep.hydra.sweeper.params
    variants = params["+ablation"].split(",")
    files = {p.stem for p in (ROOT / "conf" / "ablation").glob("*.yaml")}
    assert set(variants) == files == {"gpt2", "speedrun", *ONE_CHANGE}
    assert len(str(params.seed).split(",")) == 3


def test_the_table_reads_finished_jobs(tmp_path):
    import subprocess
    import sys

    for variant, seed, loss, wall in (("gpt2", 1, 2.0, 10.0), ("gpt2", 2, 2.2, 3.0), ("rope", 1, 1.9, 10.0),
                                      ("rope", 2, 1.95, 10.0)):
        d = tmp_path / f"+ablation={variant},seed={seed}"
        (d / ".hydra").mkdir(parents=True)  # as Hydra writes a job: its overrides name the variant and seed
        (d / ".hydra" / "overrides.yaml").write_text(f"- +ablation={variant}\n- seed={seed}\n- hparams_search=x\n")
        (d / "result.json").write_text(json.dumps({"final_val_loss": loss, "wall_seconds": wall}))
    (tmp_path / "+ablation=gpt2,seed=2" / "train.log").write_text("[gptlab] resume=auto: resuming from x/last.ckpt\n")
    (tmp_path / "+ablation=wsd,seed=1").mkdir()  # unfinished: no result.json
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "speedrun" / "ablation_table.py"), str(tmp_path),
                          "--out", str(tmp_path / "t.json")], capture_output=True, text=True, check=True).stdout
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["rope"]["minus_baseline"] == pytest.approx(1.925 - 2.1) and t["gpt2"]["sd"] == pytest.approx(0.1414, abs=1e-4)
    assert "wsd" not in t and "| rope | 2 | 1.9250 ± 0.0354 | -0.1750 | 10 |" in out
    assert t["gpt2"]["wall_seconds_mean"] == 10.0  # the resumed seed's clock is left out


def test_experiment_speedrun_cpu_is_the_cumulative_recipe_at_750_steps(tmp_path):
    """The recipe the speedrun measures is the ablation's cumulative row, nothing more."""
    exp = compose_train_cfg(tmp_path / "a", tmp_path / "d", ["experiment=speedrun_cpu"])
    abl = compose_train_cfg(tmp_path / "a", tmp_path / "d", ["+ablation=speedrun", "trainer.max_steps=750",
                                                            "optim.lr_decay_steps=750"])
    assert OmegaConf.to_container(exp, resolve=False) == OmegaConf.to_container(abl, resolve=False)
    muon = compose_train_cfg(tmp_path / "a", tmp_path / "d", ["experiment=speedrun_muon"])
    assert muon.optim.optimizer._target_ == "gptlab.optim.muon" and muon.model.position == "rope"
