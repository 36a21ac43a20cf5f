"""The two other Transformer families, built from model.py's blocks.

- `Encoder` (BERT shape): GPT's blocks with the causal mask removed, so every position reads the
  whole sequence. Two heads: the tied token head (masked-token prediction, or one output per input
  position) and a sequence-classification head over the [CLS] position or the mean of all positions.
- `EncoderDecoder` ("Attention is all you need" / T5 shape): a bidirectional Encoder reads the input;
  a causal decoder writes the output, and each of its blocks adds a cross-attention sub-layer whose
  keys and values are the encoder's output. One token embedding serves the encoder input, the
  decoder input and the output head.
- The decoder-only family is `gptlab.model.GPT`, unchanged.

All pre-norm, GELU, learned positions, as GPT. `build_model` picks the family from `arch`.

Padding: task batches are right-padded (gptlab.data.tasks). Wherever padded inputs meet attention that
is not causal (the encoder's self-attention, the decoder's cross-attention) the caller passes
`pad_mask` (B, S), True at the input's padding (torch.nn.Transformer's key_padding_mask), and no query
reads those keys; gptlab.tasks derives it from the task's pad id. The decoder's own self-attention is
causal over right-padded targets, so a real target token never reads a pad (they all come after it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from gptlab.model import GPT, Block, GPTConfig, KVCache, LayerKVCache

ARCHS = ("decoder", "encoder", "encoder_decoder")
POOLS = ("cls", "mean")


@dataclass
class FamilyConfig(GPTConfig):
    """GPTConfig plus the family: n_layer counts the encoder's blocks (encoder) or the decoder's
    (decoder, encoder_decoder); n_enc_layer the encoder's blocks of an encoder_decoder (None: n_layer).
    n_classes > 0 gives the encoder a classification head, pooled at position 0 ("cls") or averaged."""

    arch: str = "decoder"
    n_enc_layer: int | None = None
    n_classes: int = 0
    pool: str = "cls"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch={self.arch!r}: choose one of {ARCHS}")
        if self.pool not in POOLS:
            raise ValueError(f"model.pool={self.pool!r}: choose one of {POOLS}")
        if not isinstance(self.n_classes, int) or self.n_classes < 0:
            raise ValueError(f"model.n_classes={self.n_classes!r}: give an integer >= 0 (0: no classification head)")
        if self.n_enc_layer is not None and (not isinstance(self.n_enc_layer, int) or self.n_enc_layer < 1):
            raise ValueError(f"model.n_enc_layer={self.n_enc_layer!r}: give a positive integer (or null: n_layer)")
        if self.arch == "encoder_decoder" and self.position != "learned":  # its decoder embeds positions itself
            raise ValueError(f"model.arch=encoder_decoder with model.position={self.position!r}: the encoder–decoder "
                             f"uses learned positions (model.position=learned)")
        if self.n_classes and self.arch != "encoder":
            raise ValueError(f"model.n_classes={self.n_classes} is the encoder's classification head; arch="
                             f"{self.arch!r} classifies by generating a label token (set model.n_classes=0)")


class Encoder(GPT):
    """GPT with bidirectional attention (causal=False) and an optional classification head."""

    def __init__(self, config: GPTConfig):
        super().__init__(replace(config, causal=False))
        n_classes = getattr(config, "n_classes", 0)
        self.pool = getattr(config, "pool", "cls")
        self.cls_head = nn.Linear(config.n_embd, n_classes, bias=True) if n_classes else None
        if self.cls_head is not None:
            self._init_weights(self.cls_head)

    def hidden(self, idx: torch.Tensor, need_weights: bool = False,
               pad_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, list]:
        """The final-normed states (B, T, n_embd) and, with need_weights, every layer's attention;
        pad_mask (B, T) True at padding, which no position reads (the pads' own states are junk)."""
        x, rope = self._embed(idx, 0)
        maps = []
        for block in self.transformer.h:
            x, att = block(x, 0, need_weights=need_weights, rope=rope, pad_mask=pad_mask)
            maps.append(att)
        return self.transformer.ln_f(x), maps

    def classify(self, idx: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (B, n_classes) from position 0 ([CLS]) or the mean over the non-pad positions."""
        if self.cls_head is None:
            raise ValueError("this encoder has no classification head: build it with model.n_classes > 0")
        h, _ = self.hidden(idx, pad_mask=pad_mask)
        if self.pool == "cls":
            return self.cls_head(h[:, 0])
        keep = torch.ones_like(idx, dtype=h.dtype) if pad_mask is None else (~pad_mask).to(h.dtype)
        return self.cls_head((h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True))


@dataclass
class Memory:
    """The encoder output as the decoder reads it: each decoder block's cross-attention keys and
    values (B, nh, S, hs), computed once per input, and the input's pad_mask (B, S) or None. The two
    travel together, so whatever reorders the rows (beam search) reorders the mask with them."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    pad_mask: torch.Tensor | None = None

    def index_select(self, index: torch.Tensor) -> Memory:
        """Row i becomes row index[i]."""
        kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.kv]
        return Memory(kv, None if self.pad_mask is None else self.pad_mask.index_select(0, index))


class CrossAttention(nn.Module):
    """Queries from the decoder, keys and values from the encoder output. No causal mask (the whole
    input is known before the first output token); only the input's padding is hidden."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.q_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.kv_proj = nn.Linear(config.n_embd, 2 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.dropout = config.n_head, config.dropout

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, nh, S, hs) of the encoder output: computed once per input while decoding."""
        B, S, C = memory.size()
        kv = self.kv_proj(memory).view(B, S, 2, self.n_head, C // self.n_head)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], need_weights: bool = False,
                pad_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.size()
        q = self.q_proj(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k, v = kv
        keep = None if pad_mask is None else ~pad_mask[:, None, None, :]  # (B, 1, 1, S): True = read
        att = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
            att = F.softmax(scores if keep is None else scores.masked_fill(~keep, float("-inf")), dim=-1)
            y = att @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), att


class DecoderBlock(Block):
    """GPT's causal block with a cross-attention sub-layer between self-attention and the MLP."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.ln_x = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.cross = CrossAttention(config)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], pos: int = 0,
                need_weights: bool = False, cache: LayerKVCache | None = None, pad_mask: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor | None, torch.Tensor | None]]:
        a, self_att = self.attn(self.ln_1(x), pos, need_weights, cache)  # causal: needs no pad mask
        x = x + a
        c, cross_att = self.cross(self.ln_x(x), kv, need_weights, pad_mask)  # pad_mask: the input's
        x = x + c
        x = x + self.mlp(self.ln_2(x))
        return x, (self_att, cross_att)


class EncoderDecoder(nn.Module):
    """Encoder over the input, causal decoder with cross-attention over the encoder output.

    `forward(src, tgt_in, targets, src_pad_mask)` is teacher forcing: logits (B, T, vocab) for the token
    after each of tgt_in's, which starts with the decoder start token. `for_input(src, src_pad_mask)` wraps
    the model as a decoder-only view conditioned on src, for gptlab.generation. src_pad_mask (B, S), True
    at src's padding, hides it from the encoder's self-attention and the decoder's cross-attention."""

    def __init__(self, config: FamilyConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(replace(config, n_layer=config.n_enc_layer or config.n_layer, n_classes=0))
        dec = replace(config, causal=True)
        self.decoder = nn.ModuleDict(dict(
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([DecoderBlock(dec) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
        ))
        self.decoder.apply(self.encoder._init_weights)
        # GPT-2's scaled init of the residual projections, here three per decoder block
        for name, p in self.decoder.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(3 * config.n_layer))

    @property
    def wte(self) -> nn.Embedding:
        return self.encoder.transformer.wte  # shared: encoder input, decoder input, output head

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.encoder.transformer.wpe.weight.numel() + self.decoder.wpe.weight.numel()
        return n

    def encode(self, src: torch.Tensor, src_pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder.hidden(src, pad_mask=src_pad_mask)[0]

    def memory(self, encoded: torch.Tensor, src_pad_mask: torch.Tensor | None = None) -> Memory:
        """The decoder's view of the encoder output: its cross-attention keys/values and the pad mask."""
        return Memory([block.cross.keys_values(encoded) for block in self.decoder.h], src_pad_mask)

    def decode(self, tgt: torch.Tensor, memory: Memory, pos: int = 0, need_weights: bool = False,
               cache: KVCache | None = None) -> tuple[torch.Tensor, list]:
        """Final-normed decoder states (B, T, n_embd) for tgt at positions pos.., and attention maps;
        `cache` holds the decoder self-attention's keys/values of positions < pos and receives these."""
        T = tgt.size(1)
        if pos + T > self.config.block_size:
            raise ValueError(f"cannot decode positions {pos}..{pos + T - 1}: block_size is {self.config.block_size}")
        positions = torch.arange(pos, pos + T, dtype=torch.long, device=tgt.device)
        x = self.decoder.drop(self.wte(tgt) + self.decoder.wpe(positions))
        maps = []
        layers = cache.layers if cache is not None else [None] * len(self.decoder.h)
        for block, kv, layer_cache in zip(self.decoder.h, memory.kv, layers):
            x, att = block(x, kv, pos, need_weights, layer_cache, memory.pad_mask)
            maps.append(att)
        return self.decoder.ln_f(x), maps

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.encoder.lm_head(h)[..., : self.config.vocab_size]

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, targets: torch.Tensor | None = None,
                src_pad_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        h, _ = self.decode(tgt_in, self.memory(self.encode(src, src_pad_mask), src_pad_mask))
        logits = self.head(h)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def for_input(self, src: torch.Tensor, src_pad_mask: torch.Tensor | None = None) -> ConditionedDecoder:
        """This model's decoder conditioned on src (B, S), for gptlab.generation.generate."""
        return ConditionedDecoder(self, src, src_pad_mask)

    @torch.no_grad()
    def attention_maps(self, src: torch.Tensor, tgt_in: torch.Tensor,
                       src_pad_mask: torch.Tensor | None = None) -> dict[str, list[torch.Tensor]]:
        """Every layer's weights: encoder self (B, nh, S, S), decoder self (T, T), cross (T, S)."""
        encoded, enc = self.encoder.hidden(src, need_weights=True, pad_mask=src_pad_mask)
        _, dec = self.decode(tgt_in, self.memory(encoded, src_pad_mask), need_weights=True)
        return {"encoder": enc, "decoder": [a for a, _ in dec], "cross": [c for _, c in dec]}


class Seq2SeqCache(KVCache):
    """One encoder–decoder decode's state: the decoder self-attention's growing keys/values (a
    KVCache) and the encoder output's Memory (cross-attention keys/values and pad mask), fixed for
    the decode; a reorder (beam search) moves the Memory's rows with the cache's."""

    def __init__(self, layers: list[LayerKVCache], cross: Memory):
        super().__init__(layers)
        self.cross = cross

    def reorder(self, index: torch.Tensor, length: int) -> None:
        super().reorder(index, length)
        self.cross = self.cross.index_select(index)


class ConditionedDecoder:
    """An EncoderDecoder's decoder given one input batch: a decoder-only model of the target, with
    the interface gptlab.generation decodes (config, forward_last, new_kv_cache), so greedy, sampling
    and beam search are the same code as for GPT.

    The encoder runs once, here. With the cache, the cross-attention keys/values are computed once
    per decode (new_kv_cache) and only the decoder's self-attention grows token by token; without
    it every step recomputes both, as an uncached GPT recomputes its prefix. Rows beyond the input's
    batch (beam search: num_beams per input, input-major) reuse their input's encoder output and pad mask."""

    def __init__(self, model: EncoderDecoder, src: torch.Tensor, src_pad_mask: torch.Tensor | None = None):
        self.model, self.config, self.pad_mask = model, model.config, src_pad_mask
        with torch.no_grad():
            self.encoded = model.encode(src, src_pad_mask)

    # generation switches train/eval; the wrapped model does it
    @property
    def training(self) -> bool:
        return self.model.training

    def train(self, mode: bool = True) -> ConditionedDecoder:
        self.model.train(mode)
        return self

    def eval(self) -> ConditionedDecoder:
        return self.train(False)

    def _cross(self, rows: int) -> Memory:
        B = self.encoded.size(0)
        if rows % B:
            raise ValueError(f"{rows} decoding rows cannot share the encoder outputs of {B} inputs")
        pad = None if self.pad_mask is None else self.pad_mask.repeat_interleave(rows // B, dim=0)
        return self.model.memory(self.encoded.repeat_interleave(rows // B, dim=0), pad)

    def forward_last(self, idx: torch.Tensor, pos: int = 0, cache: Seq2SeqCache | None = None) -> torch.Tensor:
        memory = cache.cross if cache is not None else self._cross(idx.size(0))
        h, _ = self.model.decode(idx, memory, pos, cache=cache)
        return self.model.head(h[:, -1])

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> Seq2SeqCache:
        c, p = self.config, self.model.wte.weight
        layers = [LayerKVCache(batch_size, c.n_head, max_len or c.block_size, c.n_embd // c.n_head,
                               device=p.device, dtype=p.dtype) for _ in self.model.decoder.h]
        return Seq2SeqCache(layers, self._cross(batch_size))


def build_model(model: dict[str, Any]) -> nn.Module:
    """The family named by model['arch'] (default "decoder": gptlab.model.GPT) from a config dict."""
    config = FamilyConfig.from_dict(model)
    if config.arch == "encoder":
        return Encoder(config)
    if config.arch == "encoder_decoder":
        return EncoderDecoder(config)
    return GPT(GPTConfig.from_dict(config.to_dict()))
