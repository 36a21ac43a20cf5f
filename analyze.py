"""Report on a trained run: loss curves, attention maps, samples, per-position loss, embeddings;
see conf/analyze.yaml."""

import sys

import hydra
from omegaconf import DictConfig

from gptlab.entrypoints.analyze import run_analyze
from gptlab.entrypoints.argv import quote_free_text
from gptlab.entrypoints.config import register_resolvers
from gptlab.errors import user_errors

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
@user_errors  # a UserError → `error: <message>`, exit status 2
def main(cfg: DictConfig) -> None:
    run_analyze(cfg)


if __name__ == "__main__":
    sys.argv = quote_free_text(sys.argv)  # prompt=Café ROMEO, prompt=ROMEO, hi: free text, not Hydra syntax
    main()
