"""Issue 3's round trip: a Hugging Face GPT-2 folder → train.py init_from=<folder> → export → transformers."""

import pytest
import torch

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.entrypoints.train import train
from gptlab.export import export

transformers = pytest.importorskip("transformers")


def test_finetune_from_hf_folder_and_export_back(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     activation_function="gelu_new")
    transformers.GPT2LMHeadModel(hf_cfg).save_pretrained(tmp_path / "hf")
    cfg = tiny_cfg("data=shakespeare", f"init_from={tmp_path / 'hf'}", "model.block_size=32", "model.dropout=0.0",
                   "trainer.max_steps=6", "eval_interval=3", "data.val_batches=1", "optim.warmup_steps=0",
                   "optim.lr=1e-3")
    result = train(cfg)
    assert result["steps"] == 6
    model, ckpt = load_gpt_from_lightning_ckpt(result["last_ckpt"])
    assert (model.config.n_layer, model.config.n_embd, model.config.block_size) == (2, 32, 32)  # HF arch, cropped
    assert ckpt["tokenizer"]["kind"] == "tiktoken" and ckpt["hyper_parameters"]["init_from"] == str(tmp_path / "hf")
    original = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert not torch.equal(model.transformer.h[0].mlp.c_fc.weight, original.transformer.h[0].mlp.c_fc.weight.T)

    out = export(result["last_ckpt"], tmp_path / "exported")
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    idx = torch.randint(0, 50257, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], atol=1e-5, rtol=1e-5)


def test_init_from_unknown_name_offline_is_a_clear_error(tiny_cfg, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tiny_cfg("data=shakespeare", "init_from=gpt2-nonexistent", "trainer.max_steps=1")
    with pytest.raises(Exception, match="gpt2-nonexistent"):
        train(cfg)
