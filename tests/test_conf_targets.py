"""conf/model and conf/data nodes build their objects (`_target_`, `_partial_` for what the run adds), while
checkpoints and run configs written before they did still resume and load."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from gptlab.checkpoint import check_resumable
from gptlab.data import GPTDataModule, read_meta
from gptlab.data.build import build_datamodule, data_folder, to_plain
from gptlab.families import FamilyConfig
from gptlab.lit_module import GPTLitModule
from gptlab.model import GPTConfig
from gptlab.training import build_module


def test_model_node_builds_a_model_config_given_the_vocab_size(tiny_cfg):
    """The node builds a FamilyConfig: GPTConfig plus the family keys (arch, n_enc_layer, n_classes, pool)."""
    cfg = tiny_cfg("model.n_layer=3")
    node = to_plain(cfg.model)
    node.pop("compile")
    config = instantiate(node)(vocab_size=65)
    assert isinstance(config, GPTConfig) and config == FamilyConfig.from_dict({**node, "vocab_size": 65})
    assert (config.n_layer, config.n_embd, config.vocab_size) == (3, 32, 65)


def test_data_node_builds_the_datamodule_of_its_folder(tiny_cfg):
    cfg = tiny_cfg("data.batch_size=5", "data.tokenizer=bpe")  # the shorthand for data/tokenizer=bpe
    dm = instantiate(cfg.data)(block_size=cfg.model.block_size, seed=cfg.seed, data_dir=cfg.paths.data_dir)
    assert isinstance(dm, GPTDataModule) and dm.batch_size == 5 and dm.block_size == 32
    assert dm.data_dir == data_folder(to_plain(cfg.data), cfg.paths.data_dir) and dm.data_dir.name == "bpe-4096"
    with open_dict(cfg):  # a run's config.yaml saved before data nodes named their _target_
        del cfg.data["_target_"], cfg.data["_partial_"]
    assert build_datamodule(cfg).data_dir == dm.data_dir


def test_checkpoints_from_before_the_targets_still_resume(tiny_cfg, tmp_path):
    """hparams hold the GPTConfig dict, never the node's `_target_`: a checkpoint whose model dict came
    straight from the conf (as before) and one from build_module compare equal in check_resumable."""
    cfg = tiny_cfg()
    dm = build_datamodule(cfg)
    dm.prepare_data()
    meta = read_meta(dm.data_dir)
    module = build_module(cfg, meta, dm.data_dir)
    assert not {"_target_", "_partial_"} & set(module.hparams.model)
    old_model = {k: v for k, v in to_plain(cfg.model).items() if not k.startswith("_")} | {"vocab_size": 65}
    before = GPTLitModule(model=old_model, optim=to_plain(cfg.optim))
    assert before.hparams.model == module.hparams.model
    path = tmp_path / "before.ckpt"
    torch.save({"hyper_parameters": dict(before.hparams), "state_dict": before.state_dict()}, path)
    check_resumable(path, module.hparams.model)
    with pytest.raises(ValueError, match="n_layer=2 there but 3 here"):
        check_resumable(path, build_module(tiny_cfg("model.n_layer=3"), meta, dm.data_dir).hparams.model)


def test_a_model_key_that_is_no_config_field_is_named(tiny_cfg):
    cfg = tiny_cfg("+model.n_layers=3")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    with pytest.raises(ValueError, match="model: .*n_layers.*gptlab.families.FamilyConfig"):
        build_module(cfg, read_meta(dm.data_dir), dm.data_dir)
