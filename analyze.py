"""Report on a trained run: loss curves, attention maps, samples, per-position loss, embeddings;
see conf/analyze.yaml."""

import hydra
from omegaconf import DictConfig

from gptlab.entrypoints.analyze import run_analyze
from gptlab.entrypoints.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    run_analyze(cfg)


if __name__ == "__main__":
    main()
