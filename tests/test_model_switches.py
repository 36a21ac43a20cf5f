"""Every GPTConfig switch (and the llama / speedrun combinations) through the paths that use the model:
forward and causality, cached vs uncached decoding (sampling, beams, the EHR trajectories), the
attention maps of analyze.py, one optimizer step, and save/load (state dict, HF folders, a Lightning run).
GPT-2 and Llama numerical parity against transformers live in tests/test_hf.py."""

import dataclasses
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers / huggingface_hub read it: no test touches the network

import numpy as np
import pytest
import torch

from gptlab.analysis.attention import attention_weights
from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.decoding import Decoding, next_token
from gptlab.ehr import risk
from gptlab.generation import Decoder, beam_search, generate
from gptlab.hf import from_pretrained, hf_architecture, save_pretrained
from gptlab.model import GPT, GPTConfig
from gptlab.optim import adamw
from tests.conftest import tiny_gpt

LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False)
SPEEDRUN = dict(position="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, bias=False, tie_embeddings=False,
                logit_softcap=15.0, zero_init_proj=True)
SWITCHES = {
    "gpt2": {},
    "rope": dict(position="rope", rope_theta=100.0),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(mlp="swiglu"),
    "swiglu_hidden": dict(mlp="swiglu", mlp_hidden=40),
    "relu2": dict(mlp="relu2"),
    "qk_norm": dict(qk_norm=True),
    "no_bias": dict(bias=False),
    "untied": dict(tie_embeddings=False),
    "softcap": dict(logit_softcap=2.0),  # small enough that the cap bends the logits of a random model
    "zero_init_proj": dict(zero_init_proj=True),
    "llama": LLAMA,
    "speedrun": SPEEDRUN,
}
# the switches a Hugging Face architecture computes exactly: save_pretrained writes them, the rest it refuses
EXPORTS = {"gpt2": "gpt2", "no_bias": "gpt2", "zero_init_proj": "gpt2", "llama": "llama"}
V = 50


def model_with(name: str, seed: int = 0, **extra) -> GPT:
    """A tiny GPT with the switch, its weights moved off init (zero-initialised projections included)
    so that every part of the network affects the logits."""
    model = tiny_gpt(seed=seed, n_head=4, vocab_size=V, block_size=24, **{**SWITCHES[name], **extra})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def tokens(T: int, B: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", SWITCHES)
def test_forward_is_causal_and_the_switch_changes_the_model(name):
    model, idx = model_with(name), tokens(20)
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 20, V) and torch.isfinite(loss)
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % V
    assert torch.allclose(model(changed)[0][:, :10], logits[:, :10], atol=1e-6)
    if name != "gpt2":  # the same seed without the switch is another function
        plain = tiny_gpt(seed=0, n_head=4, vocab_size=V, block_size=24)
        assert not torch.allclose(plain(idx)[0], logits, atol=1e-3)
    if "logit_softcap" in SWITCHES[name]:
        assert logits.abs().max() < SWITCHES[name]["logit_softcap"]


@pytest.mark.parametrize("name", SWITCHES)
def test_cached_decoding_equals_uncached(name):
    """The KV cache holds keys at their absolute positions (RoPE rotates them before they are cached)."""
    model, idx = model_with(name), tokens(5)
    for strategy in ("greedy", "sample"):
        runs = [generate(model, idx, Decoding(strategy=strategy, max_new_tokens=25, seed=3, use_cache=c))
                for c in (True, False)]  # 30 > block_size 24: the window slides too
        assert torch.equal(*runs)
    beams = [beam_search(model, idx[:1], Decoding(strategy="beam", num_beams=3, max_new_tokens=10, use_cache=c))
             for c in (True, False)]
    assert torch.equal(beams[0].sequences, beams[1].sequences)
    # step by step: each one-token forward through the cache gives the full forward's logits
    decoder, full = Decoder(model, 2), model(tokens(24))[0]
    for t in range(4, 25):
        assert torch.allclose(decoder(tokens(24)[:, :t]), full[:, t - 1], atol=1e-5)


class UncachedRows:
    """RaggedDecoder's interface with no cache: every step re-reads each row's whole sequence alone."""

    def __init__(self, model, prompts, max_new_tokens):
        self.model, self.rows = model, [list(p) for p in prompts]
        self.first = self._last()

    def _last(self) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.model.forward_last(torch.tensor([r])) for r in self.rows]).float()

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        for r, t in zip(self.rows, tokens.tolist()):
            r.append(t)
        return self._last()

    def reorder(self, index: torch.Tensor) -> None:
        self.rows = [list(self.rows[i]) for i in index.tolist()]


@pytest.mark.parametrize("name", SWITCHES)
def test_ehr_trajectories_with_the_cache_equal_those_without(name, monkeypatch):
    """ETHOS sampling (prompts of two lengths in one batch, rows fanned out, finished rows dropped
    from the cache, every row at its own position): the same trajectories, and at every step the
    same next-token logits, as recomputing each row's whole sequence alone."""
    model = model_with(name)
    kw = dict(n=5, outcome_ids=[3], stop_ids=[4], token_minutes=np.linspace(0.0, 60.0, V), horizon_minutes=600.0,
              max_new_tokens=16)

    def run() -> tuple[list[risk.TrajectoryResult], list[torch.Tensor]]:
        seen = []
        monkeypatch.setattr(risk, "next_token", lambda logits, *a, **k: seen.append(logits) or next_token(logits, *a, **k))
        return risk.sample_trajectories_batch(model, [[7, 8, 9], [5, 6, 7, 8, 9, 10]],
                                              generator=torch.Generator().manual_seed(0), **kw), seen

    cached, cached_logits = run()
    monkeypatch.setattr(risk, "RaggedDecoder", UncachedRows)
    uncached, uncached_logits = run()
    # TrajectoryResult holds arrays (each row's end): compare field by field
    for c, u in zip(cached, uncached):
        assert all(np.array_equal(getattr(c, f.name), getattr(u, f.name)) for f in dataclasses.fields(c))
        assert c.tokens > 0
    assert len(cached_logits) == len(uncached_logits)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(cached_logits, uncached_logits))


@pytest.mark.parametrize("name", SWITCHES)
def test_attention_maps_are_the_weights_of_the_forward(name):
    model, idx = model_with(name), tokens(12, B=1)
    logits, maps = model.attention_maps(idx)
    assert torch.allclose(logits, model(idx)[0], atol=1e-5)  # the explicit path computes what SDPA does
    weights = attention_weights(model, idx[0].tolist())
    assert weights.shape == (2, 4, 12, 12)
    assert np.allclose(weights.sum(-1), 1.0, atol=1e-5) and np.all(np.triu(weights, k=1) == 0)


@pytest.mark.parametrize("name", SWITCHES)
def test_training_steps_reduce_the_loss_and_reach_every_parameter(name):
    torch.manual_seed(0)
    model = tiny_gpt(seed=0, n_head=4, vocab_size=V, block_size=24, **SWITCHES[name]).train()
    opt = adamw(model, lr=1e-2, betas=(0.9, 0.999), weight_decay=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    idx = tokens(24, B=4)
    losses = []
    for _ in range(4):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    # every parameter trained: zero-initialised projections hold back the layers before them for one step only
    assert [n for n, p in model.named_parameters() if torch.equal(p, before[n])] == []


@pytest.mark.parametrize("name", SWITCHES)
def test_save_and_load(name, tmp_path):
    model, idx = model_with(name, vocab_multiple=16), tokens(16)
    again = GPT(GPTConfig.from_dict(model.config.to_dict()))
    again.load_state_dict(model.state_dict())
    assert torch.equal(again.eval()(idx)[0], model(idx)[0])
    if name not in EXPORTS:
        with pytest.raises(ValueError, match="no Hugging Face equivalent"):
            save_pretrained(model, tmp_path)
        return
    assert hf_architecture(model.config) == EXPORTS[name]
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path, vocab_multiple=16)
    assert torch.allclose(loaded(idx)[0], model(idx)[0], atol=1e-6)


@pytest.mark.parametrize("preset", ["llama_cpu", "speedrun_cpu"])
def test_presets_train_and_load_from_the_checkpoint(preset, tiny_cfg, tmp_path):
    """The Hydra presets through the real train.py path: two steps, then the checkpoint's GPT has the preset's switches."""
    from gptlab.entrypoints.train import train

    overrides = (f"model={preset}", "model.n_layer=1", "model.n_embd=32", "model.block_size=16", "data.batch_size=2",
                 "trainer.max_steps=2", "eval_interval=2", "data.val_batches=1")
    train(tiny_cfg(*overrides))
    (ckpt,) = (tmp_path / "run").rglob("last.ckpt")
    model, _ = load_gpt_from_lightning_ckpt(ckpt)
    expected = {**(LLAMA if preset == "llama_cpu" else SPEEDRUN)}
    assert {k: getattr(model.config, k) for k in expected} == expected
    assert "wpe" not in model.transformer
    assert torch.isfinite(model(torch.zeros(1, 8, dtype=torch.long))[0]).all()


@pytest.mark.parametrize("field, value, words", [
    ("position", "alibi", "position must be one of"),
    ("norm", "batchnorm", "norm must be one of"),
    ("mlp", "geglu", "mlp must be one of"),
    ("logit_softcap", 0.0, "logit_softcap must be positive"),
    ("logit_softcap", -30.0, "logit_softcap must be positive"),
    ("mlp_hidden", 0, "mlp_hidden must be a positive integer"),
    ("mlp_hidden", 85.5, "mlp_hidden must be a positive integer"),
    ("rope_theta", 0.0, "rope_theta must be positive"),
])
def test_bad_switch_values_name_the_key(field, value, words):
    with pytest.raises(ValueError, match=words):
        GPTConfig(n_layer=1, n_head=2, n_embd=16, **{field: value})


def test_rope_needs_an_even_head_size():
    with pytest.raises(ValueError, match=r"position='rope'.*n_embd/n_head=18/2=9 must be even"):
        GPTConfig(n_layer=1, n_head=2, n_embd=18, position="rope")
    GPTConfig(n_layer=1, n_head=2, n_embd=18)  # learned positions take any head size


def test_swiglu_default_width_keeps_the_parameter_count_of_the_gelu_mlp():
    for n_embd in (32, 48, 128, 768):
        config = GPTConfig(n_layer=1, n_head=2, n_embd=n_embd, mlp="swiglu")
        assert config.hidden_size % 8 == 0 and abs(3 * config.hidden_size - 8 * n_embd) < 3 * 8
    assert GPTConfig(n_layer=1, n_head=2, n_embd=32, mlp="gelu").hidden_size == 128


def test_exporting_a_mixed_model_names_the_keys_that_block_each_architecture(tmp_path):
    model = tiny_gpt(seed=0, position="rope", qk_norm=True)
    with pytest.raises(ValueError, match=r"as GPT-2 it differs in position='rope' \(needs 'learned'\), "
                                         r"qk_norm=True \(needs False\); as Llama in norm='layernorm'"):
        save_pretrained(model, tmp_path)
    assert not (tmp_path / "config.json").exists()
