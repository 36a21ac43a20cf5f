"""The GPT-2 model in one file, readable top to bottom.

By default the same architecture as OpenAI's GPT-2 (and nanoGPT): token + learned position
embeddings, a stack of pre-norm Transformer blocks, a final LayerNorm and a language-model head
tied to the token embedding. GPTConfig's switches (position, norm, mlp, qk_norm, bias,
tie_embeddings, logit_softcap, zero_init_proj) swap in later designs one at a time; RoPE + RMSNorm
+ SwiGLU + no bias + an untied head is the Llama architecture. This module knows nothing of
Lightning, Hydra or data files.
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
POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu", "relu2")


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
    # ---- beyond GPT-2: each switch's default is GPT-2's choice, so the defaults build GPT-2 exactly ----
    position: str = "learned"  # "rope" rotates q/k by position: relative offsets, no position table (Llama)
    rope_theta: float = 10000.0  # RoPE's base: the longest wavelength, in tokens, is about 2π·rope_theta
    norm: str = "layernorm"  # "rmsnorm" skips the mean subtraction (and bias): cheaper, as good (Llama)
    mlp: str = "gelu"  # "swiglu": gated SiLU (Llama); "relu2": ReLU squared, sparse and cheap (speedrun)
    mlp_hidden: int | None = None  # MLP width; None: 4·n_embd (swiglu: 8/3·n_embd, the same parameter count)
    qk_norm: bool = False  # RMS-normalise queries and keys per head: bounded logits allow higher LRs
    tie_embeddings: bool = True  # False: a separate output head, more capacity for a vocab×n_embd cost
    logit_softcap: float | None = None  # cap·tanh(logits/cap) bounds the logits, stabilising training (Gemma 2)
    zero_init_proj: bool = False  # residual projections start at 0: each block starts as the identity

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
        self._check_switches()

    def _check_switches(self) -> None:
        for name, allowed in (("position", POSITIONS), ("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"GPTConfig: position='rope' rotates pairs of head dimensions, so the head size "
                f"n_embd/n_head={self.n_embd}/{self.n_head}={self.n_embd // self.n_head} must be even"
            )
        if not self.rope_theta > 0:
            raise ValueError(f"GPTConfig.rope_theta must be positive, got {self.rope_theta}")
        if self.mlp_hidden is not None and (not isinstance(self.mlp_hidden, int) or self.mlp_hidden < 1):
            raise ValueError(
                f"GPTConfig.mlp_hidden must be a positive integer or None (the default width), got {self.mlp_hidden!r}"
            )
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise ValueError(
                f"GPTConfig.logit_softcap must be positive (logits = cap·tanh(logits/cap)) or None for no cap, "
                f"got {self.logit_softcap}"
            )

    @property
    def hidden_size(self) -> int:
        """The MLP's inner width: mlp_hidden, else 4·n_embd; SwiGLU's two input matrices get 2/3 of
        that (rounded up to a multiple of 8), so its parameter count matches the 4·n_embd MLP's."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return (8 * self.n_embd // 3 + 7) // 8 * 8
        return 4 * self.n_embd

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

        A batch that grows (one prompt fanned out to n samples) gets new buffers gathered from whole
        old rows: one copy, with no zeroing and no temporary. A batch that keeps or loses rows (beam
        search, finished samples dropped) copies only the `length` filled positions, in place:
        copying whole preallocated buffers would cost block_size positions per layer per step, and
        allocating them anew at every drop is slower (experiments/benchmarks/README.md). Buffers
        never hold uninitialised memory: rows of a ragged batch (KVCacheRows) read, masked, positions
        they never wrote (zeros, or another row's finite history), and a masked weight of 0 times
        leftover NaN memory would still be NaN."""
        n = index.numel()
        if n > self.k.size(0):
            self.k = self.k.index_select(0, index)  # 2x faster than k[index]
            self.v = self.v.index_select(0, index)
            return
        k = self.k[:, :, :length].index_select(0, index)
        v = self.v[:, :, :length].index_select(0, index)
        if n < self.k.size(0):
            self.k, self.v = self.k[:n], self.v[:n]
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


class _RowsLayer:
    """One layer's keys/values for a range of rows, written at each row's own position."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, keys: int, rows: torch.Tensor):
        self.k, self.v, self.keys, self.rows = k, v, keys, rows

    def update(self, pos: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(pos, int):  # a prefill: positions pos..pos+T-1 of these rows
            T = k.size(2)
            self.k.narrow(2, pos, T).copy_(k)
            self.v.narrow(2, pos, T).copy_(v)
            return self.k.narrow(2, 0, pos + T), self.v.narrow(2, 0, pos + T)
        self.k[self.rows, :, pos] = k[:, :, 0]  # one new token per row, each at its own position
        self.v[self.rows, :, pos] = v[:, :, 0]
        return self.k.narrow(2, 0, self.keys), self.v.narrow(2, 0, self.keys)


class KVCacheRows:
    """Rows lo..hi of a KVCache, shaped as one (a `layers` list), for rows that each sit at their own
    length: a serving batch, or trajectories continuing prompts of different lengths.

    An int pos writes positions pos..pos+T-1 of these rows (a prompt prefilled alone in its row). A
    (B,) tensor pos writes row b's one new token at pos[b] and returns the first `keys` positions of
    every row: `keys` is the caller's bound on the longest row (kept on the host, so a step needs no
    device sync to size the attention). Positions past a row's own end hold another row's history
    or nothing; the model's mask for a tensor pos hides them."""

    def __init__(self, cache: KVCache, lo: int, hi: int, keys: int = 0):
        # one row index for every layer of a step (a cache may hold no layers: a test's stub model)
        rows = torch.arange(hi - lo, device=cache.layers[0].k.device) if cache.layers else None
        self.layers = [_RowsLayer(c.k[lo:hi], c.v[lo:hi], keys, rows) for c in cache.layers]


def make_norm(config: GPTConfig) -> nn.Module:
    """LayerNorm (GPT-2) or RMSNorm (Llama; never a bias), over n_embd with the config's epsilon."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.layer_norm_epsilon)
    return nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)


def rope_cos_sin(config: GPTConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles of absolute `positions`: (T,) → (T, head_dim), or one row of
    positions per sequence (B, T) → (B, 1, T, head_dim), which broadcasts over the heads.

    Frequency i (of head_dim/2) turns by position·theta^(-2i/head_dim); each angle appears twice
    (once per half of the head, the rotate-half layout of HF's Llama). Computed in float32."""
    hs = config.n_embd // config.n_head
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float32, device=positions.device) / hs))
    angles = positions.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    if angles.dim() == 3:  # (B, T, hs): per-row positions (a batch of requests at different lengths)
        angles = angles.unsqueeze(1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x[i], x[i + hs/2]) pair of x (B, nh, T, hs) by its position's angle: the dot
    product of a rotated query and key then depends only on their distance."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


Rope = tuple[torch.Tensor, torch.Tensor] | None  # (cos, sin) of the forwarded positions, None without RoPE


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
        self.qk_norm = config.qk_norm
        self.eps = config.layer_norm_epsilon

    def forward(
        self, x: torch.Tensor, pos: int | torch.Tensor = 0, need_weights: bool = False,
        cache: LayerKVCache | None = None, rope: Rope = None, pad_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.size()
        # (B, T, 3C) -> q, k, v, each (B, nh, T, hs): each head attends independently. The same views
        # as split + view + transpose per tensor, in 3 ops instead of 7 (decoding is op-bound at batch 1)
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.qk_norm:  # before the rotation, which preserves norms
            q = F.rms_norm(q, (q.size(-1),), eps=self.eps)
            k = F.rms_norm(k, (k.size(-1),), eps=self.eps)
        if rope is not None:  # the new tokens' own positions; cached keys were rotated when written
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
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
        # pad_mask (B, S), True at padding keys: no query reads them, so a row's outputs are the same
        # however much padding its batch adds (torch's key_padding_mask)
        if pad_mask is not None:
            keep = ~pad_mask[:, None, None, :]  # (B, 1, 1, S)
            mask = keep if mask is None else mask & keep
        square = S == T and not isinstance(pos, torch.Tensor) and pad_mask is None  # the plain causal triangle

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
    """GPT-2's GELU MLP, or ReLU² (same shapes), or SwiGLU: c_fc computes the gate and the value
    side by side in one matmul (gate first), and their product goes through c_proj."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        hidden = config.hidden_size
        self.c_fc = nn.Linear(config.n_embd, (2 if self.kind == "swiglu" else 1) * hidden, bias=config.bias)
        self.gelu = nn.GELU(approximate=config.gelu_approximate)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.kind == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = self.gelu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm block: normalising *before* each sub-layer keeps a clean residual path from
    input to output, which is what lets deep GPT-2 stacks train without warm restarts."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, pos: int | torch.Tensor = 0, need_weights: bool = False,
        cache: LayerKVCache | None = None, rope: Rope = None, pad_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, att = self.attn(self.ln_1(x), pos, need_weights, cache, rope, pad_mask)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, att


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        V = config.padded_vocab_size
        # built (and so initialised, from the RNG) in GPT-2's order: wte, wpe, blocks, ln_f, lm_head
        embeddings = dict(wte=nn.Embedding(V, config.n_embd))
        if config.position == "learned":  # RoPE encodes positions inside attention instead
            embeddings["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(dict(
            **embeddings,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, V, bias=False)
        if config.tie_embeddings:
            # Weight tying: the same matrix maps tokens to vectors and vectors back to token scores.
            # It saves vocab×n_embd parameters (38M for GPT-2 small) and helps small-data training.
            self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2's scaled init: each block adds two residual projections to the stream, so their
        # weights are shrunk by 1/sqrt(2·n_layer) to keep the residual variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init_proj:
                    torch.nn.init.zeros_(p)
                else:
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (the tied embedding once). non_embedding drops the lookup tables, as
        nanoGPT reports: the position table, and the token table only when untied (tied, it is
        also the output layer)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.transformer.wte.weight.numel()
        return n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, pos: int | torch.Tensor = 0,
        cache: KVCache | None = None, pad_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab_size) for every position; loss when targets are given.

        `pos` is the absolute position of idx[:, 0]; it is non-zero only while decoding with a
        KV `cache` (see `new_kv_cache`), which then holds positions 0..pos-1 and receives these
        keys and values. A (B,) tensor gives each row its own position, with a cache that writes each
        row there (gptlab.serving.batch). Targets equal to IGNORE_INDEX (-1) are ignored in the loss.

        `pad_mask` (B, T), True at padding tokens, hides them from every query: a bidirectional model
        (causal=False) on a right-padded batch needs it, or each row reads its padding. A causal model
        on right-padded rows needs none: a token reads only the tokens before it, never the pads after.
        """
        if pad_mask is not None and cache is not None:
            raise ValueError("pad_mask is for whole right-padded sequences (bidirectional models), not cached decoding")
        logits = self._head(self._blocks(idx, pos, cache, pad_mask))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    def _blocks(self, idx: torch.Tensor, pos: int | torch.Tensor, cache: KVCache | None,
                pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The residual stream after the last block, (B, T, n_embd)."""
        x, rope = self._embed(idx, pos)
        layers = cache.layers if cache is not None else [None] * len(self.transformer.h)
        for block, layer_cache in zip(self.transformer.h, layers):
            x, _ = block(x, pos, False, layer_cache, rope, pad_mask)
        return x

    def _embed(self, idx: torch.Tensor, pos: int | torch.Tensor) -> tuple[torch.Tensor, Rope]:
        """The token (+ learned position) embeddings, and RoPE's (cos, sin) for positions pos..pos+T-1
        (pos a (B,) tensor: each row's own start)."""
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
        if self.config.position == "rope":
            return self.transformer.drop(self.transformer.wte(idx)), rope_cos_sin(self.config, positions)
        return self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions)), None

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.transformer.ln_f(x))
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]  # padding rows are never real tokens
        return logits

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the attention weights of every layer, each (B, n_head, T, T), via the explicit path."""
        x, rope = self._embed(idx, 0)
        maps = []
        for block in self.transformer.h:
            x, att = block(x, 0, need_weights=True, rope=rope)
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
        if "wpe" in self.transformer:  # RoPE has no table: its angles are computed per position
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())
