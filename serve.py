"""Serve a checkpoint over HTTP (OpenAI-compatible API + playground page); see conf/serve.yaml."""

import hydra
from omegaconf import DictConfig

from gptlab.entrypoints.config import register_resolvers
from gptlab.entrypoints.serve import run_serve

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    run_serve(cfg)


if __name__ == "__main__":
    main()
