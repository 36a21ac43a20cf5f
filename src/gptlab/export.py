"""Export a trained gptlab checkpoint as a Hugging Face folder (config.json + model.safetensors): GPT-2
(transformers.GPT2LMHeadModel) for a GPT-2-shaped model, Llama (transformers.LlamaForCausalLM) for one
with the Llama switches (model=llama_cpu); either loads back into gptlab with gptlab.hf.from_pretrained.
The command line is the Hydra entry point gptlab.entrypoints.export (`python export.py ckpt_path=... out=...`,
installed as gptlab-export)."""

from __future__ import annotations

from pathlib import Path

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.hf import save_pretrained


def export(ckpt_path: str | Path, out: str | Path) -> Path:
    """Write the GPT of a Lightning checkpoint to `out` as a HF GPT-2 or Llama folder; returns the folder."""
    model, _ = load_gpt_from_lightning_ckpt(ckpt_path)
    save_pretrained(model, out)
    return Path(out)
