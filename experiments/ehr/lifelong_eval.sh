#!/usr/bin/env bash
# Issue 16 measurements on the lifelong synthetic cohort: choose on tuning, score held-out once.
#   experiments/ehr/lifelong_eval.sh tuning   <ckpt> <tag>                  # km and hazard, both tasks, first 600 labels
#   experiments/ehr/lifelong_eval.sh held_out <ckpt> <tag> <estimator>      # the chosen pair, all labels, once
# The rule, fixed before any tuning result: the (checkpoint, estimator) pair with the highest mean
# tuning AUROC over the two tasks is scored on held-out. Reports (report.md/json, predictions.csv,
# calibration.png) land in experiments/ehr/synthetic/lifelong/<split>_<task>_<tag>_<estimator>/.
# OMP_NUM_THREADS=1: see the README's Commands.
set -euo pipefail
split=$1 ckpt=$2 tag=$3
if [ "$split" = tuning ]; then
  runs="km hazard"; extra=(max_labels=600 baseline=false n_boot=300)
else
  runs=$4; extra=(n_boot=1000)
fi
for estimator in $runs; do
  for task in synthetic_death synthetic_readmission; do
    out=experiments/ehr/synthetic/lifelong/${split}_${task#synthetic_}_${tag}_${estimator}
    OMP_NUM_THREADS=1 .venv/bin/python ehr_eval.py task=$task ckpt_path="$ckpt" "splits=[$split]" n_trajectories=20 \
      risk_estimator="$estimator" "${extra[@]}" out_dir="$out" > "/tmp/i16_${split}_${task}_${tag}_${estimator}.log" 2>&1
  done
done
