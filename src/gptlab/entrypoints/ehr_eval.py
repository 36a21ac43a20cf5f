"""`gptlab-ehr-eval` / `python ehr_eval.py ckpt_path=... task=...`: risk of a MEDS task by trajectory
sampling from a trained EHR checkpoint; see conf/ehr_eval.yaml."""

from __future__ import annotations

from omegaconf import DictConfig

from gptlab.entrypoints.config import hydra_entry, to_plain


@hydra_entry("ehr_eval")
def main(cfg: DictConfig) -> float:
    from gptlab.ehr.evaluate import evaluate_task  # the EHR stack loads only for this entry point

    return evaluate_task(to_plain(cfg))["metrics"]["trajectory"]["auroc"]  # returned for Hydra sweepers
