"""Hugging Face GPT-2 parity: random tiny GPT2Configs both ways, vocab padding, cropping, checkpoints, errors."""

import os
import sys

os.environ["HF_HUB_OFFLINE"] = (
    "1"  # before transformers / huggingface_hub read it: no test touches the network
)

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.entrypoints.export import main as export_main
from gptlab.hf import from_pretrained, save_pretrained
from gptlab.model import GPT, GPTConfig
from tests.conftest import tiny_gpt

CONFIGS = [
    dict(vocab_size=101, n_positions=32, n_embd=48, n_layer=2, n_head=3, activation_function="gelu_new"),
    dict(
        vocab_size=257,
        n_positions=17,
        n_embd=64,
        n_layer=3,
        n_head=4,
        activation_function="gelu",
        layer_norm_epsilon=1e-6,
    ),
    dict(
        vocab_size=50, n_positions=64, n_embd=32, n_layer=1, n_head=1, activation_function="gelu_pytorch_tanh"
    ),
    dict(vocab_size=130, n_positions=24, n_embd=96, n_layer=4, n_head=8, layer_norm_epsilon=1e-3),
]


@pytest.fixture(autouse=True)
def offline_empty_hub_cache(tmp_path, monkeypatch):
    """An empty HF cache and offline mode, whatever the machine has or whichever module imported the hub first."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial weights everywhere: random biases and LayerNorm gains, not the zeros and ones of init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * noise if ("ln_" in name and name.endswith("weight")) else 0.1 * noise)
    return model.eval()


def hf_model(seed: int, **kwargs) -> GPT2LMHeadModel:
    config = GPT2Config(bos_token_id=None, eos_token_id=None, **kwargs)
    return randomize_(GPT2LMHeadModel(config), seed)


def tokens(vocab_size: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def max_diff(ours: GPT, theirs: GPT2LMHeadModel, idx: torch.Tensor) -> float:
    logits, _ = ours(idx)
    return (logits - theirs(idx).logits).abs().max().item()


def write_bin(hf: GPT2LMHeadModel, folder: Path, prefix: str = "transformer.") -> None:
    """A pytorch_model.bin folder; prefix="" plus mask buffers is the layout of OpenAI's original files."""
    hf.config.save_pretrained(folder)
    state = {k.removeprefix("transformer.") if not prefix else k: v for k, v in hf.state_dict().items()}
    if not prefix:
        for i in range(hf.config.n_layer):
            state[f"h.{i}.attn.bias"] = torch.tril(
                torch.ones(1, 1, hf.config.n_positions, hf.config.n_positions)
            )
            state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, folder / "pytorch_model.bin")


@pytest.mark.parametrize("i", range(len(CONFIGS)))
@pytest.mark.parametrize("layout", ["safetensors", "bin", "openai_bin"])
def test_hf_to_gptlab_logits_match(tmp_path, i, layout):
    cfg = CONFIGS[i]
    hf = hf_model(seed=i, **cfg)
    if layout == "safetensors":
        hf.save_pretrained(tmp_path)
    else:
        write_bin(hf, tmp_path, prefix="transformer." if layout == "bin" else "")
    model = from_pretrained(tmp_path).eval()
    assert model.config.block_size == cfg["n_positions"] and model.config.vocab_size == cfg["vocab_size"]
    assert max_diff(model, hf, tokens(cfg["vocab_size"], cfg["n_positions"])) < 1e-5


@pytest.mark.parametrize("i", range(len(CONFIGS)))
def test_gptlab_to_hf_logits_match(tmp_path, i):
    cfg = CONFIGS[i]
    gelu = "none" if cfg.get("activation_function") == "gelu" else "tanh"
    config = GPTConfig(
        block_size=cfg["n_positions"],
        vocab_size=cfg["vocab_size"],
        n_layer=cfg["n_layer"],
        n_head=cfg["n_head"],
        n_embd=cfg["n_embd"],
        layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-5),
        gelu_approximate=gelu,
    )
    model = randomize_(GPT(config), seed=10 + i)
    save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = tokens(config.vocab_size, config.block_size)
    assert max_diff(model, hf, idx) < 1e-5
    back = from_pretrained(tmp_path).eval()  # and round trip exactly
    with torch.no_grad():
        assert torch.equal(back(idx)[0], model(idx)[0])


def test_bias_free_model_exports_with_zero_biases(tmp_path):
    model = randomize_(
        tiny_gpt(vocab_size=70, bias=False), 3
    )
    save_pretrained(model, tmp_path)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert max_diff(model, hf, tokens(70, 16)) < 1e-5


def test_vocab_padding_keeps_logits_and_is_not_exported(tmp_path):
    hf = hf_model(seed=5, **CONFIGS[0])  # vocab 101
    hf.save_pretrained(tmp_path / "hf")
    model = from_pretrained(tmp_path / "hf", vocab_multiple=64).eval()
    wte = model.transformer.wte.weight
    assert wte.shape[0] == 128 and torch.count_nonzero(wte[101:]) == 0
    assert model.lm_head.weight is wte
    idx = tokens(101, 32)
    assert model(idx)[0].shape[-1] == 101
    assert max_diff(model, hf, idx) < 1e-5
    save_pretrained(model, tmp_path / "out")
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert back.transformer.wte.weight.shape[0] == 101
    assert max_diff(model, back, idx) < 1e-5


def test_crop_block_size_keeps_first_positions(tmp_path):
    hf = hf_model(seed=6, **CONFIGS[0])  # n_positions 32
    hf.save_pretrained(tmp_path)
    idx = tokens(101, 32)
    with torch.no_grad():
        full = hf(idx).logits
        cropped = from_pretrained(tmp_path, block_size=8).eval()
        assert cropped.config.block_size == 8 and cropped.transformer.wpe.weight.shape[0] == 8
        assert (cropped(idx[:, :8])[0] - full[:, :8]).abs().max() < 1e-5
        model = from_pretrained(tmp_path).eval()
        model.crop_block_size(12)
        assert (model(idx[:, :12])[0] - full[:, :12]).abs().max() < 1e-5


def test_name_in_local_hf_cache(tmp_path):
    """A hub name resolves offline from the cache layout transformers leaves behind."""
    hf = hf_model(seed=7, **CONFIGS[2])
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--someone--tiny-gpt2"
    hf.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = from_pretrained("someone/tiny-gpt2").eval()
    assert max_diff(model, hf, tokens(50, 64)) < 1e-5


def test_name_downloads_when_online(tmp_path, monkeypatch):
    """Online, an uncached name is downloaded: safetensors only when the repo has them (a stand-in hub here)."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    hf = hf_model(seed=2, **CONFIGS[0])
    hf.save_pretrained(tmp_path / "repo")
    calls = []

    def fake_snapshot_download(name, local_files_only=False, allow_patterns=None):
        calls.append((name, local_files_only, allow_patterns))
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        if name == "broken/repo":
            raise ConnectionError("hub unreachable")
        return str(tmp_path / "repo")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = from_pretrained("someone/gpt2").eval()
    assert max_diff(model, hf, tokens(101, 32)) < 1e-5
    assert [c[1] for c in calls] == [True, False] and "pytorch_model.bin" not in calls[1][2]
    with pytest.raises(FileNotFoundError, match="'broken/repo'.*downloading it failed: ConnectionError"):
        from_pretrained("broken/repo")


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder .*nonexistent.*not a valid hub model name"):
        from_pretrained(tmp_path / "nonexistent")
    with pytest.raises(
        FileNotFoundError, match=r"'gpt2-nope' with weights in the HF cache .*hub-cache.*HF_HUB_OFFLINE"
    ):
        from_pretrained("gpt2-nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(tmp_path / "empty")

    hf = hf_model(seed=8, **CONFIGS[0])
    hf.save_pretrained(tmp_path / "ok")
    with pytest.raises(ValueError, match=r"block_size=40 .*n_positions=32"):
        from_pretrained(tmp_path / "ok", block_size=40)
    with pytest.raises(ValueError, match=r"cannot override \['n_layer'\]"):
        from_pretrained(tmp_path / "ok", n_layer=3)
    (tmp_path / "ok" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights in"):
        from_pretrained(tmp_path / "ok")

    for key, value, message in [
        ("activation_function", "relu", "activation_function='relu' is not supported"),
        ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx=True is not supported"),
        ("add_cross_attention", True, "add_cross_attention=True"),
        ("n_inner", 100, "n_inner=100"),
    ]:
        folder = tmp_path / key
        hf_model(seed=9, **CONFIGS[0]).save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ValueError, match=message):
            from_pretrained(folder)


def test_shape_mismatch_names_the_tensor(tmp_path):
    hf_model(seed=1, **CONFIGS[0]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_positions": 31}))
    with pytest.raises(ValueError, match=r"transformer.wpe.weight has shape \(32, 48\)"):
        from_pretrained(tmp_path)


def fake_lightning_ckpt(path: Path, model: GPT) -> None:
    """What the LightningModule saves: `model.` keys (with torch.compile's `_orig_mod.`) and the config dict."""
    state = {f"model._orig_mod.{k}": v for k, v in model.state_dict().items()}
    hparams = {"model": {**model.config.to_dict(), "name": "tiny"}, "lr": 1e-3}
    torch.save({"state_dict": state, "hyper_parameters": hparams, "epoch": 0}, path)


def export_cli(monkeypatch, *overrides: str) -> None:
    """`python export.py <overrides>` (the Hydra entry point), in this process."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["export.py", *overrides])
    export_main()


def test_lightning_checkpoint_and_export_cli(tmp_path, monkeypatch):
    model = randomize_(tiny_gpt(vocab_size=65), 4)
    fake_lightning_ckpt(tmp_path / "last.ckpt", model)
    loaded, _ = load_gpt_from_lightning_ckpt(tmp_path / "last.ckpt")
    idx = tokens(65, 16)
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])
    assert loaded.lm_head.weight is loaded.transformer.wte.weight

    export_cli(monkeypatch, f"ckpt_path={tmp_path / 'last.ckpt'}", f"out={tmp_path / 'exported'}")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "exported").eval()
    assert max_diff(model, hf, idx) < 1e-5


def test_checkpoint_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(FileNotFoundError, match="missing.ckpt not found"):
        load_gpt_from_lightning_ckpt(tmp_path / "missing.ckpt")
    (tmp_path / "garbage.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="garbage.ckpt is not a readable PyTorch checkpoint"):
        load_gpt_from_lightning_ckpt(tmp_path / "garbage.ckpt")
    fake_lightning_ckpt(
        tmp_path / "good.ckpt", tiny_gpt(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=8)
    )
    data = (tmp_path / "good.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.ckpt is not a readable"):
        load_gpt_from_lightning_ckpt(tmp_path / "truncated.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"cfg": Path("x")}}, tmp_path / "object.ckpt")
    with pytest.raises(ValueError, match="refusing to load .*object.ckpt.*Unsupported global.*PosixPath"):
        load_gpt_from_lightning_ckpt(tmp_path / "object.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1.0}}, tmp_path / "nohp.ckpt")
    with pytest.raises(ValueError, match=r"hyper_parameters\['model'\].*missing.*\['lr'\]"):
        load_gpt_from_lightning_ckpt(tmp_path / "nohp.ckpt")
    with pytest.raises(SystemExit):  # Hydra prints the error, then exits 1
        export_cli(monkeypatch, f"ckpt_path={tmp_path / 'missing.ckpt'}", f"out={tmp_path / 'x'}")
    assert "missing.ckpt not found" in capsys.readouterr().err


def test_real_lightning_checkpoint_loads_with_weights_only(tmp_path):
    """Everything Lightning itself puts in a .ckpt (loops, callbacks, optimizer) passes weights_only=True."""
    import lightning as L

    class LitGPT(L.LightningModule):
        def __init__(self, model: dict):
            super().__init__()
            self.save_hyperparameters()
            self.model = GPT(GPTConfig(**model))

        def training_step(self, batch, batch_idx):
            return self.model(*batch)[1]

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    data = tokens(20, 9).repeat(4, 1)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data[:, :-1], data[:, 1:]), batch_size=4
    )
    lit = LitGPT(GPTConfig(block_size=8, vocab_size=20, n_layer=1, n_head=1, n_embd=8).to_dict())
    trainer = L.Trainer(
        max_steps=2,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(lit, loader)
    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    model, _ = load_gpt_from_lightning_ckpt(ckpt)
    with torch.no_grad():
        assert torch.equal(model(data[:, :8])[0], lit.model.eval()(data[:, :8])[0])


# ---- Llama: a GPT with RoPE + RMSNorm + SwiGLU + no bias is LlamaForCausalLM ------------------------------
LLAMA_CONFIGS = [
    dict(vocab_size=101, hidden_size=48, intermediate_size=100, num_hidden_layers=2, num_attention_heads=3,
         max_position_embeddings=32),
    dict(vocab_size=257, hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=4,
         max_position_embeddings=17, rms_norm_eps=1e-5, tie_word_embeddings=True,
         rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
    dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1,
         max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
]
LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False)


def randomize_llama_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere, RMSNorm gains around 1 (HF's names end in norm.weight, ours in ln_*.weight)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            gain = name.endswith("norm.weight") or ".ln_" in name or name.startswith("ln_")
            p.copy_(1.0 + 0.2 * noise if gain else 0.1 * noise)
    return model.eval()


def hf_llama(seed: int, **kwargs):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(bos_token_id=None, eos_token_id=None, pad_token_id=None, **kwargs)
    return randomize_llama_(LlamaForCausalLM(config), seed)


def llama_gpt(seed: int, **overrides) -> GPT:
    config = dict(n_layer=2, n_head=4, n_embd=32, block_size=24, vocab_size=61, **LLAMA)
    return randomize_llama_(GPT(GPTConfig(**{**config, **overrides})), seed)


@torch.no_grad()
def llama_max_diff(ours: GPT, theirs, idx: torch.Tensor) -> float:
    return (ours(idx)[0] - theirs(idx).logits).abs().max().item()


@pytest.mark.parametrize("i", range(len(LLAMA_CONFIGS)))
def test_llama_to_gptlab_logits_match(tmp_path, i):
    cfg = LLAMA_CONFIGS[i]
    hf = hf_llama(seed=i, **cfg)
    hf.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path).eval()
    assert model.config.block_size == cfg["max_position_embeddings"] and model.config.mlp_hidden == cfg["intermediate_size"]
    assert model.config.tie_embeddings == cfg.get("tie_word_embeddings", False)
    assert llama_max_diff(model, hf, tokens(cfg["vocab_size"], cfg["max_position_embeddings"])) < 1e-4


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(tie_embeddings=True, vocab_multiple=16, rope_theta=500.0, layer_norm_epsilon=1e-6),
    dict(n_layer=3, n_head=2, n_embd=48, mlp_hidden=72, dropout=0.1),
])
def test_gptlab_llama_to_hf_logits_match_and_round_trip(tmp_path, overrides):
    from transformers import LlamaForCausalLM

    model = llama_gpt(seed=3, **overrides)
    save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    hf = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    idx = tokens(61, 24)
    assert llama_max_diff(model, hf, idx) < 1e-4
    back = from_pretrained(tmp_path, vocab_multiple=model.config.vocab_multiple).eval()
    with torch.no_grad():
        assert torch.equal(back(idx)[0], model(idx)[0])


def test_llama_cached_greedy_decoding_and_attention_maps_match_transformers(tmp_path):
    """Decoding through our KV cache (RoPE at absolute positions) gives transformers' greedy tokens,
    and the attention maps of analyze.py are LlamaForCausalLM's eager attention weights."""
    from transformers import LlamaForCausalLM

    from gptlab.decoding import Decoding
    from gptlab.generation import generate

    model = llama_gpt(seed=4)
    save_pretrained(model, tmp_path)
    hf = LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    idx = tokens(61, 6)
    ours = generate(model, idx, Decoding(strategy="greedy", max_new_tokens=14, use_cache=True))
    with torch.no_grad():
        theirs = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=14, do_sample=False,
                             use_cache=True, pad_token_id=0)
        attentions = hf(idx, output_attentions=True).attentions
    assert torch.equal(ours, theirs)
    _, maps = model.attention_maps(idx)
    assert max((a - b).abs().max().item() for a, b in zip(maps, attentions)) < 1e-5


@pytest.mark.parametrize("key, value, message", [
    ("num_key_value_heads", 1, "num_key_value_heads=1 is not supported"),
    ("attention_bias", True, "attention_bias=True is not supported"),
    ("mlp_bias", True, "mlp_bias=True is not supported"),
    ("hidden_act", "gelu", "hidden_act='gelu' is not supported"),
    ("rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}, "rope_type='linear'"),
])
def test_llama_variants_this_gpt_cannot_compute_are_refused_naming_the_key(tmp_path, key, value, message):
    hf_llama(seed=0, **LLAMA_CONFIGS[0]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ValueError, match=message):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("switches, keys", [
    (dict(position="rope"), r"as GPT-2 it differs in position='rope' \(needs 'learned'\)"),
    (dict(logit_softcap=30.0), r"logit_softcap=30.0 \(needs None\)"),
    ({**LLAMA, "qk_norm": True}, r"as Llama in qk_norm=True \(needs False\)"),
    ({**LLAMA, "bias": True}, r"as Llama in bias=True \(needs False\)"),
    (dict(mlp_hidden=100), r"mlp_hidden=100 \(GPT-2 needs 128 or null\)"),
])
def test_export_refuses_switches_no_hf_architecture_has(tmp_path, switches, keys):
    with pytest.raises(ValueError, match=keys):
        save_pretrained(tiny_gpt(**switches), tmp_path)
    assert not (tmp_path / "config.json").exists()
