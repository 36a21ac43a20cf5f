"""The GPT-2 model in one file, readable top to bottom.

Same architecture as OpenAI's GPT-2 (and nanoGPT): token + learned position embeddings, a stack
of pre-norm Transformer blocks, a final LayerNorm and a language-model head tied to the token
embedding. This module knows nothing of Lightning, Hydra or data files.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

# A target equal to this id is left out of the loss (padding, unscored positions); every module that
# builds targets imports it from here.
IGNORE_INDEX = -1


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in Linears and LayerNorms; False is a bit faster and as good
    causal: bool = True  # False removes the mask (bidirectional, encoder-style attention)
    layer_norm_epsilon: float = 1e-5
    gelu_approximate: str = "tanh"  # GPT-2's "gelu_new" is the tanh approximation; "none" is exact erf
    vocab_multiple: int = 1  # pad the embedding rows to a multiple of this (64 → 50304) for faster matmuls
    use_sdpa: bool = True  # fused scaled_dot_product_attention; False uses the explicit-mask path

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "vocab_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                f"choose n_head among the divisors of {self.n_embd}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.gelu_approximate not in ("tanh", "none"):
            raise ValueError(f"GPTConfig.gelu_approximate must be 'tanh' or 'none', got {self.gelu_approximate!r}")

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Build from a mapping, ignoring keys that are not config fields (e.g. Hydra's `name`)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LayerKVCache:
    """Preallocated keys/values of one attention layer (litgpt style).

    New keys and values are written at their absolute positions, so decoding one token costs one
    attention row instead of recomputing the whole prefix.
    """

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_dim: int, *, device=None, dtype=None):
        shape = (batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def update(self, pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nh, T, hs) at positions pos..pos+T-1; return all keys/values up to there."""
        T = k.size(2)
        if pos + T > self.k.size(2):
            raise ValueError(f"KV cache holds {self.k.size(2)} positions; cannot write up to {pos + T}")
        # narrow() views along one dim: cheaper than slicing with [:, :, a:b], which matters at batch 1
        self.k.narrow(2, pos, T).copy_(k)
        self.v.narrow(2, pos, T).copy_(v)
        return self.k.narrow(2, 0, pos + T), self.v.narrow(2, 0, pos + T)

    def reorder(self, index: torch.Tensor, length: int) -> None:
        """Row i becomes old row index[i] (beam search keeps the cache of the beams it keeps).

        Only the `length` filled positions are copied, in place: copying whole preallocated
        buffers would cost block_size positions per layer per step. When the batch changes size
        (one prompt fanned out to n samples, finished samples dropped) the buffers are reallocated."""
        k = self.k[:, :, :length].index_select(0, index)  # 2x faster than k[index]
        v = self.v[:, :, :length].index_select(0, index)
        if index.numel() != self.k.size(0):
            self.k = self.k.new_zeros((index.numel(), *self.k.shape[1:]))
            self.v = self.v.new_zeros((index.numel(), *self.v.shape[1:]))
        self.k[:, :, :length] = k
        self.v[:, :, :length] = v


class KVCache:
    """The key/value state of one decode: a `LayerKVCache` per layer, owned by the caller.

    The model holds no decoding state: a cache is made by `GPT.new_kv_cache` and passed to every
    forward of that decode, so two decodes on one model (two threads, two requests) each write only
    their own buffers."""

    def __init__(self, layers: list[LayerKVCache]):
        self.layers = layers

    @property
    def batch_size(self) -> int:
        return self.layers[0].k.size(0)

    @property
    def max_len(self) -> int:
        return self.layers[0].k.size(2)

    def reorder(self, index: torch.Tensor, length: int) -> None:
        """Reorder the batch rows of every layer over the first `length` positions (see LayerKVCache)."""
        for layer in self.layers:
            layer.reorder(index, length)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        # query, key and value projections for all heads in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.causal = config.causal
        self.use_sdpa = config.use_sdpa

    def forward(
        self, x: torch.Tensor, pos: int | torch.Tensor = 0, need_weights: bool = False,
        cache: LayerKVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.size()
        # (B, T, 3C) -> q, k, v, each (B, nh, T, hs): each head attends independently. The same views
        # as split + view + transpose per tensor, in 3 ops instead of 7 (decoding is op-bound at batch 1)
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            k, v = cache.update(pos, k, v)
        S = k.size(2)  # number of keys: the cached prefix plus the new tokens

        # Query i sits at absolute position pos+i and may see keys 0..pos+i. With no prefix
        # (S == T) that is the plain lower triangle; one new token with a cache sees everything.
        # A tensor pos (B,) puts each row at its own position (rows of a serving batch): row b's keys
        # past pos[b]+i belong to longer rows or to nobody, so its mask ends there.
        mask = None
        if isinstance(pos, torch.Tensor):
            ends = pos[:, None] + torch.arange(T, device=x.device)  # (B, T) each query's position
            mask = (torch.arange(S, device=x.device) <= ends[..., None])[:, None]  # (B, 1, T, S)
        elif self.causal and T > 1:
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
        square = S == T and not isinstance(pos, torch.Tensor)  # the plain causal triangle

        att = None
        if self.use_sdpa and not need_weights:
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=None if square else mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=mask is not None and square,
            )
        else:
            # explicit path: the same computation written out, so the weights can be returned
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            att = F.softmax(att, dim=-1)
            y = self.attn_dropout(att) @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y)), att


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate=config.gelu_approximate)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm block: normalising *before* each sub-layer keeps a clean residual path from
    input to output, which is what lets deep GPT-2 stacks train without warm restarts."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, pos: int | torch.Tensor = 0, need_weights: bool = False,
        cache: LayerKVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, att = self.attn(self.ln_1(x), pos, need_weights, cache)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, att


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        V = config.padded_vocab_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(V, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, V, bias=False)
        # Weight tying: the same matrix maps tokens to vectors and vectors back to token scores.
        # It saves vocab×n_embd parameters (38M for GPT-2 small) and helps small-data training.
        self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2's scaled init: each block adds two residual projections to the stream, so their
        # weights are shrunk by 1/sqrt(2·n_layer) to keep the residual variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (the tied embedding once). non_embedding drops the position table, as
        nanoGPT reports; the token table stays because it is also the output layer."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, pos: int | torch.Tensor = 0,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab_size) for every position; loss when targets are given.

        `pos` is the absolute position of idx[:, 0]; it is non-zero only while decoding with a
        KV `cache` (see `new_kv_cache`), which then holds positions 0..pos-1 and receives these
        keys and values. A (B,) tensor gives each row its own position, with a cache that writes each
        row there (gptlab.serving.batch). Targets equal to IGNORE_INDEX (-1) are ignored in the loss.
        """
        logits = self._head(self._blocks(idx, pos, cache))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    def _blocks(self, idx: torch.Tensor, pos: int | torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """The residual stream after the last block, (B, T, n_embd)."""
        x = self._embed(idx, pos)
        layers = cache.layers if cache is not None else [None] * len(self.transformer.h)
        for block, layer_cache in zip(self.transformer.h, layers):
            x, _ = block(x, pos, False, layer_cache)
        return x

    def _embed(self, idx: torch.Tensor, pos: int | torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        start = int(pos.max()) if isinstance(pos, torch.Tensor) else pos  # per-row positions: the furthest row
        if start + T > self.config.block_size:
            raise ValueError(
                f"cannot forward positions {start}..{start + T - 1}: block_size is {self.config.block_size} "
                f"(crop the input to its last {self.config.block_size} tokens)"
            )
        if isinstance(pos, torch.Tensor):
            positions = pos[:, None] + torch.arange(T, device=idx.device)  # (B, T)
        else:
            positions = torch.arange(pos, pos + T, dtype=torch.long, device=idx.device)
        return self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.transformer.ln_f(x))
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]  # padding rows are never real tokens
        return logits

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the attention weights of every layer, each (B, n_head, T, T), via the explicit path."""
        x = self._embed(idx, 0)
        maps = []
        for block in self.transformer.h:
            x, att = block(x, 0, need_weights=True)
            maps.append(att)
        return self._head(x), maps

    # ---- decoding -------------------------------------------------------------------------------
    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache for one decode of batch_size rows, up to max_len (default block_size) positions,
        on the model's device and dtype; pass it to forward / forward_last as `cache=`."""
        max_len = max_len or self.config.block_size
        head_dim = self.config.n_embd // self.config.n_head
        p = self.lm_head.weight
        return KVCache([
            LayerKVCache(batch_size, self.config.n_head, max_len, head_dim, device=p.device, dtype=p.dtype)
            for _ in self.transformer.h
        ])

    def forward_last(
        self, idx: torch.Tensor, pos: int | torch.Tensor = 0, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Logits (B, vocab_size) of the last position only: all that decoding needs, so the
        LM head (the largest matmul of a small GPT-2) skips the rest of a prompt or window."""
        return self._head(self._blocks(idx, pos, cache)[:, -1, :])

    # ---- surgery and I/O --------------------------------------------------------------------------
    def crop_block_size(self, block_size: int) -> None:
        """Use a shorter context than the checkpoint's (e.g. GPT-2's 1024 → 256 to fine-tune on CPU)."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"crop_block_size: {block_size} must be in 1..{self.config.block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())
