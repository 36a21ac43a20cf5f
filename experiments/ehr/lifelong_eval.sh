#!/usr/bin/env bash
# Issue 16 measurements on the lifelong synthetic cohort: tuning first (choose), held-out once.
#   experiments/ehr/lifelong_eval.sh tuning  <run>/checkpoints/last.ckpt
#   experiments/ehr/lifelong_eval.sh held_out <run>/checkpoints/last.ckpt <estimator chosen on tuning>
# Each task's report (report.md/json, predictions.csv, calibration.png) lands in
# experiments/ehr/synthetic/lifelong/<split>_<task>_n20/. OMP_NUM_THREADS=1: see the README's Commands.
set -euo pipefail
split=$1 ckpt=$2 estimator=${3:-km}
boot=$([ "$split" = tuning ] && echo 300 || echo 1000)
for task in synthetic_death synthetic_readmission; do
  OMP_NUM_THREADS=1 .venv/bin/python ehr_eval.py task=$task ckpt_path="$ckpt" "splits=[$split]" n_trajectories=20 \
    risk_estimator="$estimator" n_boot=$boot out_dir=experiments/ehr/synthetic/lifelong/${split}_${task#synthetic_}_n20 \
    > /tmp/i16_eval_${split}_${task}.log 2>&1 &
done
wait
