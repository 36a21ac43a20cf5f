"""Export a trained gptlab checkpoint as a Hugging Face GPT-2 folder.

    python -m gptlab.export ckpt_path=outputs/.../last.ckpt out=exported/gpt2-shakespeare

The folder (config.json + model.safetensors) loads with transformers.GPT2LMHeadModel.from_pretrained
and back into gptlab with gptlab.hf.from_pretrained. Arguments are key=value like the Hydra entry points
(--key value also works).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gptlab.checkpoint import load_gpt_from_lightning_ckpt
from gptlab.hf import save_pretrained


def export(ckpt_path: str | Path, out: str | Path) -> Path:
    """Write the GPT of a Lightning checkpoint to `out` as a HF GPT-2 folder; returns the folder."""
    model, _ = load_gpt_from_lightning_ckpt(ckpt_path)
    save_pretrained(model, out)
    return Path(out)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        usage="python -m gptlab.export ckpt_path=PATH out=FOLDER", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--ckpt_path", required=True, help="Lightning .ckpt written by train.py")
    parser.add_argument("--out", required=True, help="folder to write config.json + model.safetensors into")
    # key=value (Hydra style) becomes --key=value
    return parser.parse_args([f"--{a}" if "=" in a and not a.startswith("-") else a for a in argv])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        folder = export(args.ckpt_path, args.out)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"export: {e}")
    print(f"wrote {folder / 'config.json'} and {folder / 'model.safetensors'}")


if __name__ == "__main__":
    main()
