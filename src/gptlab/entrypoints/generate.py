"""`python generate.py ...`: load a checkpoint (or HF GPT-2 weights), decode a prompt, print text."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.generation import generate
from gptlab.model import GPT
from gptlab.tokenizers import TiktokenTokenizer, Tokenizer, tokenizer_from_spec


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(cfg: DictConfig) -> tuple[GPT, Tokenizer]:
    if cfg.ckpt_path:
        model, ckpt = load_gpt_from_lightning_ckpt(cfg.ckpt_path)
        if not ckpt.get("tokenizer"):
            raise ValueError(f"{cfg.ckpt_path} holds no tokenizer spec; it was not written by gptlab's train.py")
        return model, tokenizer_from_spec(ckpt["tokenizer"])
    if cfg.init_from:
        return GPT.from_pretrained(cfg.init_from), TiktokenTokenizer("gpt2")
    raise ValueError("give ckpt_path=<a .ckpt from train.py> or init_from=<HF GPT-2 folder or name>")


def read_prompt(prompt: str) -> str:
    if prompt.startswith("FILE:"):
        path = Path(prompt[5:]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path}")
        return path.read_text(encoding="utf-8")
    return prompt


def run_generate(cfg: DictConfig) -> list[str]:
    """Print and return num_samples continuations of the prompt."""
    device = pick_device(cfg.device)
    model, tok = load_model(cfg)
    model.to(device).eval()
    d = dict(cfg.decoding)
    for key in ("temperature", "top_k", "top_p"):  # top-level shortcuts win over the decoding group
        if cfg.get(key) is not None:
            d[key] = cfg[key]
    prompt = read_prompt(cfg.prompt)
    ids = tok.encode(prompt)
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give at least one character")
    if len(ids) > model.config.block_size:
        print(f"[gptlab] warning: prompt has {len(ids)} tokens; keeping the last {model.config.block_size} (block_size)")
        ids = ids[-model.config.block_size:]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    texts = []
    for i in range(cfg.num_samples):
        t0 = time.perf_counter()
        out = generate(model, idx, cfg.max_new_tokens, strategy=d.get("strategy", "sample"),
                       temperature=d.get("temperature", 1.0), top_k=d.get("top_k"), top_p=d.get("top_p"),
                       generator=g)
        dt = time.perf_counter() - t0
        text = prompt + tok.decode(out[0, len(ids):].tolist())
        texts.append(text)
        print(text)
        print(f"---------- sample {i + 1}/{cfg.num_samples}: {out.size(1) - len(ids)} tokens in {dt:.2f} s")
    return texts
