import pytest
import torch

from gptlab.model import GPT, GPTConfig
from tests.conftest import tiny_gpt

PRESETS = {  # the GPT-2 table: (n_layer, n_head, n_embd) → parameters, tied embedding counted once
    "gpt2_small": ((12, 12, 768), 124_439_808),
    "gpt2_medium": ((24, 16, 1024), 354_823_168),
    "gpt2_large": ((36, 20, 1280), 774_030_080),
    "gpt2_xl": ((48, 25, 1600), 1_557_611_200),
}


def tiny(**kw) -> GPT:
    return tiny_gpt(**{"seed": 0, "n_head": 4, **kw}).eval()


@pytest.mark.parametrize("name", PRESETS)
def test_gpt2_preset_parameter_counts(name, tmp_path):
    from omegaconf import OmegaConf

    from tests.conftest import compose_train_cfg

    # composed as train.py does: each preset states only what differs from conf/model/gpt2_base.yaml
    cfg = OmegaConf.to_container(compose_train_cfg(tmp_path, tmp_path, [f"model={name}"]).model)
    (n_layer, n_head, n_embd), expected = PRESETS[name]
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"]) == (n_layer, n_head, n_embd)
    with torch.device("meta"):
        model = GPT(GPTConfig.from_dict(cfg))
    assert model.num_params() == expected
    assert model.num_params(non_embedding=True) == expected - 1024 * n_embd


def test_logits_for_every_position_and_loss():
    model = tiny()
    idx = torch.randint(0, 50, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 50) and loss is None
    logits, loss = model(idx, idx)
    assert loss.ndim == 0 and torch.isfinite(loss)
    # untrained model ≈ uniform: loss near ln(vocab)
    assert abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.5


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_causality_future_tokens_never_change_past_logits(use_sdpa):
    model = tiny(use_sdpa=use_sdpa)
    idx = torch.randint(0, 50, (2, 12))
    base, _ = model(idx)
    for t in range(11):
        changed = idx.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 7) % 50
        logits, _ = model(changed)
        assert torch.equal(logits[:, : t + 1], base[:, : t + 1]) or torch.allclose(
            logits[:, : t + 1], base[:, : t + 1], atol=1e-6)
        assert not torch.allclose(logits[:, t + 1:], base[:, t + 1:])


def test_bidirectional_model_sees_the_future():
    model = tiny(causal=False)
    idx = torch.randint(0, 50, (1, 8))
    changed = idx.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 50
    assert not torch.allclose(model(idx)[0][:, 0], model(changed)[0][:, 0])


@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_path_equals_explicit_mask_path(causal):
    a = tiny(causal=causal)
    b = tiny(causal=causal, use_sdpa=False)
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(a(idx)[0], b(idx)[0], atol=1e-5, rtol=1e-5)
    logits, maps = a.attention_maps(idx)
    torch.testing.assert_close(logits, a(idx)[0], atol=1e-5, rtol=1e-5)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 16, 16)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 4, 16))
    upper = torch.ones(16, 16, dtype=torch.bool).triu(1)
    assert (maps[1][..., upper] == 0).all() == causal


def test_kv_cache_logits_equal_full_forward_at_every_step():
    model = tiny()
    idx = torch.randint(0, 50, (2, 16))
    full, _ = model(idx)
    cache = model.new_kv_cache(2)
    first, _ = model(idx[:, :5], pos=0, cache=cache)
    steps = [first] + [model(idx[:, t : t + 1], pos=t, cache=cache)[0] for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_reorder_fans_out_and_drops_rows():
    """One prompt fanned out to 3 rows, then row 1 dropped (as trajectory sampling does): every
    row's cached logits equal a full forward of that row's own sequence."""
    model = tiny()
    prompt = torch.randint(0, 50, (1, 6))
    cont = torch.randint(0, 50, (3, 4))
    cache = model.new_kv_cache(1, max_len=12)
    model(prompt, pos=0, cache=cache)
    cache.reorder(torch.zeros(3, dtype=torch.long), 6)
    # the fanned-out buffers come from the old rows whole: nothing uninitialised past the prompt
    assert all(bool((t[:, :, 6:] == 0).all()) for layer in cache.layers for t in (layer.k, layer.v))
    first, _ = model(cont[:, :1], pos=6, cache=cache)
    keep = torch.tensor([0, 2])
    cache.reorder(keep, 7)
    assert cache.batch_size == 2 and cache.max_len == 12
    rest = [model(cont[keep, t : t + 1], pos=6 + t, cache=cache)[0] for t in range(1, 4)]
    full, _ = model(torch.cat([prompt.expand(3, -1), cont], dim=1))
    torch.testing.assert_close(first[:, 0], full[:, 6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(rest, dim=1), full[keep, 7:], atol=1e-5, rtol=1e-5)


def test_weight_tying_and_scaled_init():
    model = tiny_gpt(n_layer=8, n_head=4, n_embd=64, block_size=8, vocab_size=100)
    assert model.lm_head.weight is model.transformer.wte.weight
    proj = model.transformer.h[0].attn.c_proj.weight
    fc = model.transformer.h[0].mlp.c_fc.weight
    assert abs(proj.std().item() - 0.02 / (2 * 8) ** 0.5) < 0.002
    assert abs(fc.std().item() - 0.02) < 0.002


def test_vocab_padding_rows_are_never_in_the_logits():
    model = tiny(vocab_size=50, vocab_multiple=64)
    assert model.transformer.wte.weight.shape[0] == 64
    logits, loss = model(torch.randint(0, 50, (1, 4)), torch.randint(0, 50, (1, 4)))
    assert logits.shape[-1] == 50 and torch.isfinite(loss)


def test_crop_block_size_keeps_first_positions():
    model = tiny()
    idx = torch.randint(0, 50, (1, 8))
    before, _ = model(idx)
    model.crop_block_size(8)
    after, _ = model(idx)
    torch.testing.assert_close(before, after)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.randint(0, 50, (1, 9)))


@pytest.mark.parametrize("bad, match", [
    (dict(n_embd=30, n_head=4), "not divisible by n_head"),
    (dict(n_layer=0), "n_layer"),
    (dict(dropout=1.5), "dropout"),
])
def test_config_errors_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**dict(n_layer=2, n_head=4, n_embd=32), **bad})


def test_two_caches_on_one_model_do_not_share_state():
    """The cache is the caller's: two decodes of different sequences interleaved step by step on one
    model each get the logits of their own sequence, and the model holds no decoding state."""
    model = tiny()
    a, b = torch.randint(0, 50, (2, 1, 12), generator=torch.Generator().manual_seed(3))
    cache_a, cache_b = model.new_kv_cache(1), model.new_kv_cache(1)
    model(a[:, :4], pos=0, cache=cache_a)
    model(b[:, :6], pos=0, cache=cache_b)
    got_a, got_b = [], []
    for t in range(6, 12):
        got_a.append(model(a[:, t - 2 : t - 1], pos=t - 2, cache=cache_a)[0])
        got_b.append(model(b[:, t : t + 1], pos=t, cache=cache_b)[0])
    torch.testing.assert_close(torch.cat(got_a, 1), model(a[:, :10])[0][:, 4:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(got_b, 1), model(b)[0][:, 6:], atol=1e-5, rtol=1e-5)
    assert not [name for name, _ in model.named_buffers()]  # no cache (or other state) lives in the model
