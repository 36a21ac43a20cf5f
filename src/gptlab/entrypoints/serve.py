"""`python serve.py ckpt_path=...`: load a checkpoint (or a HF GPT-2 folder), serve it with uvicorn.

SIGINT/SIGTERM (uvicorn's handlers) stop accepting connections, let in-flight requests finish for
up to drain_timeout_s, then stop the engine.
"""

from __future__ import annotations

from pathlib import Path

import uvicorn
from omegaconf import DictConfig, OmegaConf

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.entrypoints.config import hydra_entry
from gptlab.entrypoints.generate import pick_device
from gptlab.hf import from_pretrained
from gptlab.model import GPT
from gptlab.serving.app import create_app
from gptlab.serving.engine import Engine
from gptlab.serving.schemas import Limits
from gptlab.tokenizers import TiktokenTokenizer, Tokenizer, tokenizer_from_spec


def load_served_model(ckpt_path: str) -> tuple[GPT, Tokenizer, str]:
    """The model, its tokenizer and the id it is served as: a gptlab .ckpt or a HF GPT-2 folder."""
    if not ckpt_path:
        raise ValueError("give ckpt_path=<a .ckpt from train.py, or a Hugging Face GPT-2 folder>")
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        return from_pretrained(path), TiktokenTokenizer("gpt2"), path.name
    model, ckpt = load_gpt_from_lightning_ckpt(path)
    if not ckpt.get("tokenizer"):
        raise ValueError(f"{path} holds no tokenizer spec; it was not written by gptlab's train.py")
    run = path.parent.parent.name if path.parent.name == "checkpoints" else path.stem
    return model, tokenizer_from_spec(ckpt["tokenizer"]), run


def build_app(cfg: DictConfig):
    model, tok, name = load_served_model(cfg.ckpt_path)
    model.to(pick_device(cfg.device)).eval()
    limits = Limits(**OmegaConf.to_container(cfg.limits))
    return create_app(Engine(model, tok, max_batch=cfg.max_batch, use_cache=cfg.use_cache), cfg.model_name or name, limits)


def run_serve(cfg: DictConfig) -> None:
    app = build_app(cfg)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[gptlab] serving on {cfg.host}: reachable from other machines, with no authentication")
    print(f"[gptlab] serving on http://{cfg.host}:{cfg.port}/ (playground) and /v1 (API); Ctrl-C stops",
          flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                timeout_graceful_shutdown=cfg.drain_timeout_s)


@hydra_entry("serve")
def main(cfg: DictConfig) -> None:
    run_serve(cfg)
