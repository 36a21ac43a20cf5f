"""Hugging Face GPT-2 and Llama checkpoints in and out of gptlab's GPT.

GPT-2: our module names are GPT-2's own (nanoGPT chose them so), so the mapping is short: HF stores
the four projection weights as `Conv1D` (in, out) matrices, which are the transpose of nn.Linear's
(out, in); the causal-mask buffers some files carry are dropped; the LM head is tied to `wte`.
Llama: a GPT with RoPE + RMSNorm + SwiGLU + no bias (`LLAMA_SWITCHES`) is LlamaForCausalLM; our fused
q|k|v and gate|up matrices are HF's separate projections stacked along the output dimension, and
our RoPE uses HF's rotate-half layout, so no weight is permuted.
Loading a file never unpickles arbitrary objects: safetensors first, else `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from gptlab.checkpoint import safe_torch_load
from gptlab.errors import MissingFile, UserError
from gptlab.model import GPT, GPTConfig

# HF GPT-2 keeps these four projections as Conv1D, whose weight is the transpose of nn.Linear's.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
# GPT2Config switches for features this GPT does not have: (key, the value that is safe to load).
UNSUPPORTED = {
    "add_cross_attention": False,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "scale_attn_weights": True,
}
# The GPTConfig switches each HF architecture computes with; a GPT exports as the first that matches.
GPT2_SWITCHES = dict(position="learned", norm="layernorm", mlp="gelu", qk_norm=False, tie_embeddings=True,
                     logit_softcap=None)
LLAMA_SWITCHES = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, qk_norm=False, logit_softcap=None)
# Our per-layer tensor (under transformer.h.{i}.) → the HF Llama tensors (under model.layers.{i}.)
# stacked in it along dim 0, in this order.
LLAMA_LAYER = {
    "attn.c_attn.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attn.c_proj.weight": ("self_attn.o_proj.weight",),
    "mlp.c_fc.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "mlp.c_proj.weight": ("mlp.down_proj.weight",),
    "ln_1.weight": ("input_layernorm.weight",),
    "ln_2.weight": ("post_attention_layernorm.weight",),
}
LLAMA_GLOBAL = {"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight",
                "lm_head.weight": "lm_head.weight"}
OVERRIDABLE = ("dropout", "block_size", "vocab_multiple", "use_sdpa")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# ---- loading ---------------------------------------------------------------------------------------
def from_pretrained(path_or_name: str | Path, **overrides: Any) -> GPT:
    """A GPT with the weights of a HF GPT-2 or Llama folder or hub name; logits equal
    GPT2LMHeadModel's or LlamaForCausalLM's.

    overrides: `dropout` (default 0.0, as for inference), `block_size` (crop the position table to a
    shorter context), `vocab_multiple` (pad the embedding rows, e.g. 64 → 50304), `use_sdpa`.
    """
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise UserError(f"from_pretrained: cannot override {unknown}; allowed: {list(OVERRIDABLE)}")
    folder = resolve_hf_folder(path_or_name)
    hf_config = _read_json(folder / "config.json")
    is_llama = hf_config.get("model_type") == "llama"
    config = (gpt_config_from_llama if is_llama else gpt_config_from_hf)(hf_config, folder / "config.json")
    block_size = overrides.pop("block_size", config.block_size)
    if block_size > config.block_size:
        raise UserError(
            f"block_size={block_size} is larger than the checkpoint's position table "
            f"(n_positions={config.block_size} in {folder / 'config.json'}); use at most {config.block_size}"
        )
    config = GPTConfig.from_dict({**config.to_dict(), **overrides})

    model = GPT(config)
    if is_llama:
        state = _llama_state_to_gpt(_read_weights(folder), config)
    else:
        state = _hf_state_to_gpt(_read_weights(folder), folder, tied=hf_config.get("tie_word_embeddings", True))
    _copy_into(model, state, folder)
    if block_size < config.block_size:
        model.crop_block_size(block_size)
    return model


def resolve_hf_folder(path_or_name: str | Path) -> Path:
    """The local folder of a checkpoint: the path itself, else the HF cache, else a download when online."""
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(
            f"{path} is a file; from_pretrained wants the folder holding config.json and the weights"
        )

    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    name = str(path_or_name)
    looked = f"no folder {path.resolve()}, nor '{name}' with weights in the HF cache {constants.HF_HUB_CACHE}"
    try:
        cached = Path(snapshot_download(name, local_files_only=True))
        if _weights_file(cached):
            return cached
        reason = "the cached snapshot has no weights"
    except HFValidationError as e:
        raise MissingFile(f"{looked}: '{name}' is not a valid hub model name either ({e})") from None
    except Exception as e:  # whatever the hub raises for "not cached"; a download decides below
        reason = type(e).__name__
    if constants.HF_HUB_OFFLINE:
        raise MissingFile(
            f"{looked} ({reason}), and HF_HUB_OFFLINE is set so it cannot be downloaded. "
            f"Pass a local folder, or download '{name}' once with internet."
        )
    try:
        # safetensors if the repo has them, else the pickled weights: never both (GPT-2 small is 0.5 GB each)
        for weights in (
            ["model.safetensors", "model*.safetensors*"],
            ["pytorch_model.bin", "pytorch_model*.bin*"],
        ):
            folder = Path(snapshot_download(name, allow_patterns=["config.json", *weights]))
            if _weights_file(folder):
                return folder
    except Exception as e:
        raise MissingFile(f"{looked}, and downloading it failed: {type(e).__name__}: {e}") from None
    raise MissingFile(f"hub repo '{name}' ({folder}) has none of the weight files {list(WEIGHT_FILES)}")


def gpt_config_from_hf(hf: dict[str, Any], source: Path | str = "config.json") -> GPTConfig:
    """GPTConfig for a GPT2Config dict; refuses GPT-2 variants this GPT would compute differently."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise UserError(f"{source}: model_type={hf['model_type']!r}; only 'gpt2' and 'llama' checkpoints can be loaded")
    for key, safe in UNSUPPORTED.items():
        if hf.get(key, safe) != safe:
            raise UserError(f"{source}: {key}={hf[key]!r} is not supported by gptlab's GPT (only {safe!r})")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise UserError(
            f"{source}: activation_function={activation!r} is not supported; allowed: {list(ACTIVATIONS)}"
        )
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise UserError(
            f"{source}: n_inner={hf['n_inner']} is not supported; the MLP width is 4*n_embd={4 * n_embd}"
        )
    return GPTConfig(
        block_size=hf.get("n_positions", 1024),
        vocab_size=hf.get("vocab_size", 50257),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        dropout=0.0,
        bias=True,
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        gelu_approximate=ACTIVATIONS[activation],
    )


def gpt_config_from_llama(hf: dict[str, Any], source: Path | str = "config.json") -> GPTConfig:
    """GPTConfig for a LlamaConfig dict; refuses Llama variants this GPT would compute differently."""
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
    refused = {
        "num_key_value_heads": (hf.get("num_key_value_heads") or n_head, n_head),  # grouped-query attention
        "head_dim": (hf.get("head_dim") or n_embd // n_head, n_embd // n_head),
        "hidden_act": (hf.get("hidden_act", "silu"), "silu"),
        "attention_bias": (hf.get("attention_bias", False), False),
        "mlp_bias": (hf.get("mlp_bias", False), False),
        "rope_parameters.rope_type": (rope.get("rope_type", "default"), "default"),  # no RoPE scaling
        "rope_scaling": (hf.get("rope_scaling"), None),
    }
    for key, (value, supported) in refused.items():
        if value != supported:
            raise UserError(f"{source}: {key}={value!r} is not supported by gptlab's GPT (only {supported!r})")
    return GPTConfig(
        block_size=hf.get("max_position_embeddings", 2048),
        vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_embd=n_embd,
        mlp_hidden=hf["intermediate_size"],
        layer_norm_epsilon=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        **LLAMA_SWITCHES,
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingFile(
            f"{path} not found; a HF GPT-2 folder needs config.json and {WEIGHT_FILES[0]}"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None


def _weights_file(folder: Path) -> Path | None:
    """The folder's weights in HF's order of preference (safetensors first), or None."""
    return next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the folder's weights, whichever of HF's four layouts it uses."""
    from safetensors.torch import load_file

    def load(file: Path) -> dict[str, torch.Tensor]:
        if file.suffix == ".safetensors":
            return load_file(file)
        return safe_torch_load(file)  # weights_only, with a clear refusal of code-running pickles

    file = _weights_file(folder)
    if file is None:
        raise MissingFile(f"no weights in {folder}: expected one of {list(WEIGHT_FILES)}")
    if file.name.endswith(".index.json"):  # sharded: the index maps each tensor to its shard
        shards = sorted(set(_read_json(file)["weight_map"].values()))
        return {k: v for shard in shards for k, v in load(folder / shard).items()}
    return load(file)


def _hf_state_to_gpt(hf_state: dict[str, torch.Tensor], folder: Path, tied: bool) -> dict[str, torch.Tensor]:
    """Rename HF keys to ours (OpenAI's files lack the `transformer.` prefix) and transpose Conv1D weights."""
    state = {}
    for key, tensor in hf_state.items():
        parts = key.split(".")
        if len(parts) >= 2 and parts[-2] == "attn" and parts[-1] in ("bias", "masked_bias"):
            continue  # the causal mask and its fill value, stored as buffers by older transformers
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        state[key] = tensor

    lm_head = state.pop("lm_head.weight", None)
    wte = state.get("transformer.wte.weight")
    if not tied and lm_head is not None and wte is not None and not torch.equal(lm_head, wte):
        raise UserError(
            f"{folder}: lm_head.weight differs from wte (tie_word_embeddings=false); gptlab's GPT ties them"
        )
    return state


def _llama_state_to_gpt(hf_state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our names for HF Llama tensors: the per-layer projections stacked into our fused matrices.
    Tensors a Llama of this config does not have are kept under their HF names (reported as unexpected)."""
    hf_state = dict(hf_state)
    state = {ours: hf_state.pop(theirs) for ours, theirs in LLAMA_GLOBAL.items() if theirs in hf_state}
    for i in range(config.n_layer):
        for ours, theirs in LLAMA_LAYER.items():
            names = [f"model.layers.{i}.{t}" for t in theirs]
            if all(n in hf_state for n in names):
                state[f"transformer.h.{i}.{ours}"] = torch.cat([hf_state.pop(n) for n in names])
    return {**state, **hf_state}


@torch.no_grad()
def _copy_into(model: GPT, state: dict[str, torch.Tensor], folder: Path) -> None:
    """Copy every tensor after checking names and shapes; padded vocabulary rows are set to zero."""
    tied = model.config.tie_embeddings
    targets = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}  # tied: = wte
    missing, unexpected = sorted(set(targets) - set(state)), sorted(set(state) - set(targets))
    if missing or unexpected:
        raise UserError(
            f"weights in {folder} do not match the model of its config.json: missing {missing}, unexpected {unexpected}"
        )
    vocab_size = model.config.vocab_size
    for key, param in targets.items():
        src = state[key]
        dst = param[:vocab_size] if key in ("transformer.wte.weight", "lm_head.weight") else param
        if src.shape != dst.shape:
            raise UserError(
                f"{folder}: {key} has shape {tuple(src.shape)}, its config.json implies {tuple(dst.shape)}"
            )
        dst.copy_(src)
    # padding rows (vocab_multiple): never a real token, and their logits are sliced off
    model.transformer.wte.weight[vocab_size:].zero_()
    model.lm_head.weight[vocab_size:].zero_()


# ---- saving ----------------------------------------------------------------------------------------
def hf_architecture(config: GPTConfig) -> str:
    """"gpt2" or "llama": the HF architecture that computes exactly this GPT; a ValueError naming
    the GPTConfig keys that keep it from each, when neither does."""
    if not config.causal:
        raise UserError(
            "GPTConfig.causal=False (bidirectional attention) has no GPT-2 or Llama equivalent; cannot export"
        )
    gpt2 = _differences(config, GPT2_SWITCHES)
    if config.hidden_size != 4 * config.n_embd:
        gpt2.append(f"mlp_hidden={config.mlp_hidden} (GPT-2 needs {4 * config.n_embd} or null)")
    if not gpt2:
        return "gpt2"
    llama = _differences(config, LLAMA_SWITCHES)
    if not llama:
        return "llama"
    raise UserError(
        f"this GPTConfig has no Hugging Face equivalent, cannot export: as GPT-2 it differs in {', '.join(gpt2)}; "
        f"as Llama in {', '.join(llama)}"
    )


def _differences(config: GPTConfig, switches: dict[str, Any]) -> list[str]:
    return [f"{k}={getattr(config, k)!r} (needs {v!r})" for k, v in switches.items() if getattr(config, k) != v]


def hf_config_from_gpt(config: GPTConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The GPT2Config dict (config.json) of a GPT: GPT2LMHeadModel builds the same network from it."""
    if hf_architecture(config) != "gpt2":
        raise UserError(f"GPTConfig differs from GPT-2 in {', '.join(_differences(config, GPT2_SWITCHES))}")
    is_gpt2_vocab = config.vocab_size == 50257  # GPT-2's <|endoftext|> is token 50256
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,  # the real vocabulary: padding rows are not exported
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        # gelu_pytorch_tanh is GPT-2's gelu_new computed by torch's own kernel, exactly what this GPT
        # runs, so transformers then reproduces our logits bit for bit (gelu_new differs by ~1e-7)
        "activation_function": {"tanh": "gelu_pytorch_tanh", "none": "gelu"}[config.gelu_approximate],
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": 50256 if is_gpt2_vocab else None,
        "eos_token_id": 50256 if is_gpt2_vocab else None,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def gpt_state_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """HF GPT-2 tensors: Conv1D transposed back, padding rows dropped, the tied head stored once (as wte).

    A model trained with bias=False gets zero biases, which compute exactly what no bias does."""
    config = model.config
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    state["transformer.wte.weight"] = state["transformer.wte.weight"][: config.vocab_size]
    if not config.bias:
        for key in [k for k in state if k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))]:
            state[key.removesuffix("weight") + "bias"] = torch.zeros_like(state[key])
        for key in [k for k in state if k.endswith(CONV1D_WEIGHTS)]:
            state[key.removesuffix("weight") + "bias"] = state[key].new_zeros(state[key].size(0))
    return {
        k: (v.t() if k.endswith(CONV1D_WEIGHTS) else v).detach().to("cpu").contiguous()
        for k, v in state.items()
    }


def llama_config_from_gpt(config: GPTConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The LlamaConfig dict (config.json) of a GPT with LLAMA_SWITCHES: LlamaForCausalLM builds the same network."""
    if hf_architecture(config) != "llama":
        raise UserError(f"GPTConfig differs from Llama in {', '.join(_differences(config, LLAMA_SWITCHES))}")
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,  # the real vocabulary: padding rows are not exported
        "hidden_size": config.n_embd,
        "intermediate_size": config.hidden_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": config.n_embd // config.n_head,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.layer_norm_epsilon,
        "rope_parameters": rope,  # transformers ≥ 5
        "rope_theta": config.rope_theta,  # transformers 4.x reads this one
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": config.dropout,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def gpt_state_to_llama(model: GPT) -> dict[str, torch.Tensor]:
    """HF Llama tensors: fused matrices split into HF's projections, padding rows dropped, a tied head stored once."""
    config, ours = model.config, model.state_dict()
    V = config.vocab_size
    state = {theirs: ours[k][:V] if k != "transformer.ln_f.weight" else ours[k] for k, theirs in LLAMA_GLOBAL.items()}
    if config.tie_embeddings:
        del state["lm_head.weight"]
    for i in range(config.n_layer):
        for key, theirs in LLAMA_LAYER.items():
            parts = ours[f"transformer.h.{i}.{key}"].chunk(len(theirs))
            state.update({f"model.layers.{i}.{t}": p for t, p in zip(theirs, parts)})
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_pretrained(model: GPT, folder: str | Path) -> None:
    """Write config.json + model.safetensors that transformers' GPT2LMHeadModel.from_pretrained (for a
    GPT-2-shaped GPT) or LlamaForCausalLM.from_pretrained (for LLAMA_SWITCHES) loads; other switch
    combinations are refused, naming the keys (see hf_architecture).

    Each file is written to a temporary name beside it and renamed, so an interrupted save never
    leaves a half-written file under the final name.
    """
    from safetensors.torch import save_file

    model = getattr(model, "_orig_mod", model)  # torch.compile wraps the module
    dtype = model.lm_head.weight.dtype
    if hf_architecture(model.config) == "llama":
        tensors, config = gpt_state_to_llama(model), llama_config_from_gpt(model.config, dtype)
    else:
        tensors, config = gpt_state_to_hf(model), hf_config_from_gpt(model.config, dtype)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-save-") as tmp:
        save_file(tensors, Path(tmp) / "model.safetensors", metadata={"format": "pt"})
        (Path(tmp) / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name in ("model.safetensors", "config.json"):
            os.replace(Path(tmp) / name, folder / name)
