"""`gptlab-export` / `python export.py ckpt_path=<run>/checkpoints/last.ckpt out=<folder>`: a trained
checkpoint as a Hugging Face GPT-2 or Llama folder (config.json + model.safetensors); see conf/export.yaml."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from gptlab.entrypoints.config import hydra_entry
from gptlab.export import export


@hydra_entry("export")
def main(cfg: DictConfig) -> Path:
    folder = export(cfg.ckpt_path, cfg.out)
    print(f"wrote {folder / 'config.json'} and {folder / 'model.safetensors'}")
    return folder
