"""The encoder and encoder-decoder families: pinned to torch.nn's reference Transformer."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from gptlab.families import Encoder, EncoderDecoder, FamilyConfig, build_model
from gptlab.model import GPT

C, NH = 32, 4


def config(**kw) -> FamilyConfig:
    base = dict(n_layer=2, n_head=NH, n_embd=C, block_size=16, vocab_size=23, gelu_approximate="none")
    return FamilyConfig(**{**base, **kw})


def copy_attention(mha: nn.MultiheadAttention, weight: torch.Tensor, bias: torch.Tensor, proj: nn.Linear) -> None:
    mha.in_proj_weight.copy_(weight)
    mha.in_proj_bias.copy_(bias)
    mha.out_proj.weight.copy_(proj.weight)
    mha.out_proj.bias.copy_(proj.bias)


def copy_norm(dst: nn.LayerNorm, src: nn.LayerNorm) -> None:
    dst.weight.copy_(src.weight)
    dst.bias.copy_(src.bias)


def copy_mlp(layer, mlp) -> None:
    for dst, src in ((layer.linear1, mlp.c_fc), (layer.linear2, mlp.c_proj)):
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)


@torch.no_grad()
def copy_encoder(ref: nn.TransformerEncoder, enc: Encoder) -> None:
    for layer, block in zip(ref.layers, enc.transformer.h):
        copy_attention(layer.self_attn, block.attn.c_attn.weight, block.attn.c_attn.bias, block.attn.c_proj)
        copy_norm(layer.norm1, block.ln_1)
        copy_norm(layer.norm2, block.ln_2)
        copy_mlp(layer, block.mlp)
    copy_norm(ref.norm, enc.transformer.ln_f)


@torch.no_grad()
def copy_decoder(ref: nn.TransformerDecoder, model: EncoderDecoder) -> None:
    for layer, block in zip(ref.layers, model.decoder.h):
        copy_attention(layer.self_attn, block.attn.c_attn.weight, block.attn.c_attn.bias, block.attn.c_proj)
        cross = block.cross
        copy_attention(layer.multihead_attn, torch.cat([cross.q_proj.weight, cross.kv_proj.weight]),
                       torch.cat([cross.q_proj.bias, cross.kv_proj.bias]), cross.c_proj)
        copy_norm(layer.norm1, block.ln_1)
        copy_norm(layer.norm2, block.ln_x)
        copy_norm(layer.norm3, block.ln_2)
        copy_mlp(layer, block.mlp)
    copy_norm(ref.norm, model.decoder.ln_f)


def randomize(model: nn.Module) -> None:
    """Non-trivial LayerNorms and biases, so a swapped or skipped weight shows in the output."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def padding(lengths: tuple[int, ...] | None, B: int, T: int) -> torch.Tensor | None:
    """(B, T) True past each row's length (right padding), or None: no padding."""
    if lengths is None:
        return None
    assert len(lengths) == B and max(lengths) == T
    return torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]


def real(x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    """The non-pad positions of x (B, T, ...), flattened: the only ones a padded comparison may look at."""
    return x.flatten(0, 1) if pad is None else x[~pad]


# rows of one batch padded to different lengths (11: none, 7, 4, 1: a single real token)
PADDED = [None, (11, 7, 4, 1)]


@pytest.mark.parametrize("lengths", PADDED)
def test_encoder_equals_torch_transformer_encoder(lengths):
    """With src_key_padding_mask on torch's side and pad_mask on ours, the non-pad positions agree."""
    torch.manual_seed(0)
    enc = Encoder(config()).eval()
    randomize(enc)
    layer = nn.TransformerEncoderLayer(C, NH, 4 * C, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
    ref = nn.TransformerEncoder(layer, num_layers=2, norm=nn.LayerNorm(C), enable_nested_tensor=False).eval()
    copy_encoder(ref, enc)
    idx = torch.randint(0, 23, (4, 11))
    pad = padding(lengths, 4, 11)
    with torch.no_grad():
        x, _ = enc._embed(idx, 0)  # learned positions: no RoPE tables
        want = ref(x, src_key_padding_mask=pad)
        ours, maps = enc.hidden(idx, pad_mask=pad)
        torch.testing.assert_close(real(ours, pad), real(want, pad), rtol=1e-5, atol=1e-5)
        # and the MLM head is the tied embedding over those states
        torch.testing.assert_close(real(enc(idx, pad_mask=pad)[0], pad), real(want @ enc.transformer.wte.weight.T, pad),
                                   rtol=1e-5, atol=1e-5)
        # the explicit path (attention weights) computes the same states and gives the pads no weight
        explicit, maps = enc.hidden(idx, need_weights=True, pad_mask=pad)
        torch.testing.assert_close(real(explicit, pad), real(want, pad), rtol=1e-5, atol=1e-5)
        if pad is not None:
            assert all(float(m.masked_select(pad[:, None, None, :]).abs().max()) == 0.0 for m in maps)


@pytest.mark.parametrize("src_lengths, tgt_lengths", [(None, None), ((9, 5, 2, 1), (6, 6, 3, 1))])
def test_encoder_decoder_equals_torch_transformer(src_lengths, tgt_lengths):
    """torch.nn.Transformer with src_key_padding_mask and memory_key_padding_mask (the input's pads) and
    tgt_key_padding_mask (the target's): ours, given only the input's pad mask, agrees at every non-pad
    target position, since its causal self-attention never reads the target pads after a real token."""
    torch.manual_seed(0)
    model = EncoderDecoder(config(arch="encoder_decoder", n_enc_layer=3)).eval()
    randomize(model)
    ref = nn.Transformer(C, NH, num_encoder_layers=3, num_decoder_layers=2, dim_feedforward=4 * C, dropout=0.0,
                         activation="gelu", batch_first=True, norm_first=True).eval()
    copy_encoder(ref.encoder, model.encoder)
    copy_decoder(ref.decoder, model)
    src, tgt = torch.randint(0, 23, (4, 9)), torch.randint(0, 23, (4, 6))
    src_pad, tgt_pad = padding(src_lengths, 4, 9), padding(tgt_lengths, 4, 6)
    with torch.no_grad():
        src_x, _ = model.encoder._embed(src, 0)
        tgt_x = model.wte(tgt) + model.decoder.wpe(torch.arange(6))
        mask = torch.ones(6, 6, dtype=torch.bool).triu(1)  # bool like the padding masks: True is hidden
        hidden = ref(src_x, tgt_x, tgt_mask=mask, tgt_is_causal=True, src_key_padding_mask=src_pad,
                     tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad)
        logits, _ = model(src, tgt, src_pad_mask=src_pad)
        _, maps = model.decode(tgt, model.memory(model.encode(src, src_pad), src_pad), need_weights=True)
    torch.testing.assert_close(real(logits, tgt_pad), real(hidden @ model.wte.weight.T, tgt_pad), rtol=1e-5, atol=1e-5)
    if src_pad is not None:  # no output position reads the input's pads
        assert all(float(cross.masked_select(src_pad[:, None, None, :]).abs().max()) == 0.0 for _, cross in maps)


def test_decoder_output_depends_only_on_earlier_targets_and_the_whole_input():
    model = EncoderDecoder(config(arch="encoder_decoder")).eval()
    src, tgt = torch.randint(0, 23, (1, 8)), torch.randint(0, 23, (1, 6))
    with torch.no_grad():
        a, _ = model(src, tgt)
        tgt2 = tgt.clone()
        tgt2[0, 4] = (tgt[0, 4] + 1) % 23
        b, _ = model(src, tgt2)
        src2 = src.clone()
        src2[0, -1] = (src[0, -1] + 1) % 23
        c, _ = model(src2, tgt)
    torch.testing.assert_close(a[:, :4], b[:, :4])  # causal in the targets
    assert not torch.allclose(a[:, 4:], b[:, 4:])
    assert not torch.allclose(a[:, 0], c[:, 0])  # the first output already reads the last input token


def test_build_model_picks_the_family_and_the_decoder_is_gpt():
    assert type(build_model(dict(config().to_dict(), arch="decoder"))) is GPT
    enc = build_model(dict(config().to_dict(), arch="encoder", n_classes=5, pool="mean"))
    assert isinstance(enc, Encoder) and enc.classify(torch.zeros(2, 7, dtype=torch.long)).shape == (2, 5)
    assert isinstance(build_model(dict(config().to_dict(), arch="encoder_decoder")), EncoderDecoder)


@pytest.mark.parametrize("bad, message", [
    (dict(arch="bert"), "model.arch='bert'"),
    (dict(arch="decoder", n_classes=3), "model.n_classes=3"),
    (dict(pool="max"), "model.pool='max'"),
])
def test_bad_family_settings_name_the_key(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        config(**bad)
