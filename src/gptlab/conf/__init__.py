"""gptlab's Hydra configs, shipped as package data: the entry points read them as `pkg://gptlab.conf`,
so an installed gptlab runs from any folder. The repository's top-level `conf` links here."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent
