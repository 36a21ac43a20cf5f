"""Train a GPT. `python train.py --help` lists the config groups; see conf/train.yaml."""

import hydra
from omegaconf import DictConfig

from gptlab.entrypoints.config import register_resolvers
from gptlab.entrypoints.train import train
from gptlab.errors import user_errors

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@user_errors  # a UserError → `error: <message>`, exit status 2
def main(cfg: DictConfig) -> float | None:
    return train(cfg)["best_val_loss"]  # returned for Hydra sweepers (e.g. Optuna)


if __name__ == "__main__":
    main()
