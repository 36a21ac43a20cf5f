"""Sample text from a trained checkpoint or Hugging Face GPT-2 weights; see conf/generate.yaml."""

import sys

import hydra
from omegaconf import DictConfig

from gptlab.entrypoints.argv import quote_free_text
from gptlab.entrypoints.config import register_resolvers
from gptlab.entrypoints.generate import run_generate
from gptlab.errors import user_errors

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
@user_errors  # a UserError → `error: <message>`, exit status 2
def main(cfg: DictConfig) -> None:
    run_generate(cfg)


if __name__ == "__main__":
    sys.argv = quote_free_text(sys.argv)  # prompt=Café ROMEO, prompt=ROMEO, hi: free text, not Hydra syntax
    main()
