"""Risk of a MEDS task by trajectory sampling from a trained EHR checkpoint; see conf/ehr_eval.yaml."""

import hydra
from omegaconf import DictConfig

from gptlab.entrypoints.config import register_resolvers, to_plain
from gptlab.errors import user_errors

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="ehr_eval")
@user_errors  # a UserError → `error: <message>`, exit status 2
def main(cfg: DictConfig) -> float:
    from gptlab.ehr.evaluate import evaluate_task

    return evaluate_task(to_plain(cfg))["metrics"]["trajectory"]["auroc"]


if __name__ == "__main__":
    main()
