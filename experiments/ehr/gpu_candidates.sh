#!/usr/bin/env bash
# Issue 16, fifth session, on one GPU: two more candidates against G2, chosen on tuning, the chosen one
# scored once on held-out at N = 100. Run from the repo root, data prepared, G2 under $RUNS/G2.
#   experiments/ehr/gpu_candidates.sh <out_dir>
# Candidates (G2 = experiment=ehr_synthetic_lifelong_gpu at 6 × 192, lr 1e-3, 6,000 steps; README):
#   G3 = G2 trained longer (9,000 steps, the cosine stretched to match): G2's val loss still fell at its end
#   G4 = G2 made bigger (8 × 256, 6.5 M parameters, the same 6,000 steps): G1 → G2 (0.9 M → 2.8 M) gained 0.022 on tuning
# Tuning is gpu_lifelong.sh's protocol: first 600 labels per task, N = 20, hazard, mean AUROC over
# death and readmission; G2 is scored again here so all three come from the same code and seed.
# The rule, fixed before any result: the highest mean is chosen. G2 chosen → nothing is scored on
# held-out here (G2's held-out at N = 100 runs on CPU). G3 or G4 chosen → held-out at N = 100,
# death first (the bar), then readmission (7 tokens per trajectory: CPU can redo it). ehr_eval's RaggedDecoder batches prompts of any
# length, so prompt_batch rows fill the GPU: the 2026-12-04 device call, one label length per batch,
# went ~10x slower per process than a CPU core.
# Stages run against DEADLINE (seconds from the start); one that cannot start in time is skipped and logged.
# Env (dry runs on a CPU): PY, STEPS3 / STEPS4 (max_steps), TRAIN_EXTRA, TRAIN_MAX_TIME, TUNE_MAX,
# HELD_MAX, N_HELD, PB_TUNE / PB_HELD (prompt_batch), DEADLINE, RUNS, CHOSEN (skips the rule).
set -uo pipefail
out=$(realpath -m "${1:?usage: gpu_candidates.sh <out_dir>}")
mkdir -p "$out"
PY=${PY:-python3} STEPS3=${STEPS3:-9000} STEPS4=${STEPS4:-6000} TUNE_MAX=${TUNE_MAX:-600}
HELD_MAX=${HELD_MAX:-null} N_HELD=${N_HELD:-100} PB_TUNE=${PB_TUNE:-200} PB_HELD=${PB_HELD:-48}
DEADLINE=${DEADLINE:-540} TRAIN_MAX_TIME=${TRAIN_MAX_TIME:-00:00:04:40}
runs=${RUNS:-outputs/gpu_lifelong}
t0=$(date +%s)
left() { echo $((DEADLINE - ($(date +%s) - t0))); }
log() { echo "[gpu_candidates +$(($(date +%s) - t0))s] $*" | tee -a "$out/steps.log"; }

log "$("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")')"
G2="experiment=ehr_synthetic_lifelong_gpu model.n_layer=6 model.n_head=6 model.n_embd=192 optim.lr=1e-3 optim.min_lr=1e-4"
declare -A ARGS=(
  [G3]="$G2 trainer.max_steps=$STEPS3 optim.lr_decay_steps=$STEPS3"
  [G4]="experiment=ehr_synthetic_lifelong_gpu model.n_layer=8 model.n_head=8 model.n_embd=256 optim.lr=1e-3 optim.min_lr=1e-4 trainer.max_steps=$STEPS4 optim.lr_decay_steps=$STEPS4"
)
# shellcheck source=experiments/ehr/gpu_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_lib.sh"  # ckpt, export_weights
[ -n "$(ckpt G2)" ] || { log "no G2 checkpoint under $runs/G2"; exit 1; }
pids=()
for g in G3 G4; do
  if [ -n "$(ckpt $g)" ]; then log "$g: reusing $(ckpt $g)"; continue; fi
  # shellcheck disable=SC2086
  "$PY" train.py ${ARGS[$g]} ${TRAIN_EXTRA:-} "+trainer.max_time=$TRAIN_MAX_TIME" run_name="ehr_synthetic_lifelong_gpu_$g" \
    hydra.run.dir="$runs/$g" > "$out/train_$g.log" 2>&1 &
  pids+=($!)
done

score() {  # score <cand> <task> <split> <dir> [extra...]: one ehr_eval process, stopped at the deadline
  local c=$1 task=$2 split=$3 dir=$4; shift 4
  local s; s=$(left)
  if [ "$s" -le 5 ]; then log "skipped $dir: past the deadline"; return 1; fi
  local t=$(date +%s)
  timeout "$s" "$PY" ehr_eval.py task="synthetic_$task" ckpt_path="$(ckpt "$c")" "splits=[$split]" risk_estimator=hazard \
    out_dir="$dir" baseline=false "$@" > "$dir.log" 2>&1 || { log "scoring $dir failed or timed out (see $dir.log)"; return 1; }
  log "scored $dir in $(($(date +%s) - t)) s"
}
tune() { for task in death readmission; do
  score "$1" $task tuning "$out/tuning_${task}_$1" n_trajectories=20 max_labels="$TUNE_MAX" n_boot=300 prompt_batch="$PB_TUNE"
done; }
tune G2  # while G3 and G4 train
for p in "${pids[@]}"; do wait "$p" || log "a training run failed (see train_G*.log)"; done
log "training done: $(for g in G3 G4; do echo -n "$g $(basename "$(ckpt $g)") "; done)"
for g in G3 G4; do [ -n "$(ckpt $g)" ] && tune $g; done
chosen=$("$PY" - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
means = {}
for g in ("G2", "G3", "G4"):
    try:
        a = [json.loads((out / f"tuning_{t}_{g}" / "report.json").read_text())["metrics"]["trajectory"]["auroc"]
             for t in ("death", "readmission")]
    except FileNotFoundError:
        continue
    means[g] = sum(a) / 2
pick = max(means, key=means.get) if "G2" in means else "none"  # without G2's own tuning score, no comparison
(out / "rule.json").write_text(json.dumps({"tuning_means": means, "chosen": pick}))
print(pick)
EOF
)
chosen=${CHOSEN:-$chosen}  # env override for dry runs only
log "rule: chosen $chosen ($(cat "$out/rule.json"))"
if [ "$chosen" = G3 ] || [ "$chosen" = G4 ]; then
  for task in death readmission; do
    score "$chosen" $task held_out "$out/held_out_${task}_$chosen" n_trajectories="$N_HELD" max_labels="$HELD_MAX" \
      prompt_batch="$PB_HELD"
  done
fi
export_weights G3 G4
log "done"
