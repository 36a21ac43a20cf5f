#!/usr/bin/env bash
# One ehr_eval scoring cut into K shards (shard=i/K), WORKERS of them at a time, that survives being
# stopped: a scoring longer than one sitting (G4 at N = 100 on held-out death: ~20,000 core-seconds)
# goes on where it stopped when run again with the same arguments.
#   experiments/ehr/sharded_eval.sh <out_dir> <K> <WORKERS> <ehr_eval overrides...>
# e.g. experiments/ehr/sharded_eval.sh outputs/g4_n100_death 16 2 task=synthetic_death \
#        ckpt_path=<G4 ckpt> 'splits=[held_out]' n_trajectories=100 prompt_batch=4
# Shard i runs in <out_dir>/s<i>.part and becomes <out_dir>/s<i> only once its report is written, so a
# finished shard is never run twice and a killed one starts again from scratch (1/K of the labels).
# Shards skip the count baseline (baseline=false, so do not pass baseline=); once all K are done they
# are joined into one report, baseline refitted, in <out_dir>/joined (ehr_eval predictions=[...]).
# Each shard seeds its own sampling (seed=, 1337 by default), so the risks depend on K, not on WORKERS.
# Env: PY (default .venv/bin/python), JOIN=0 to stop before the join.
set -uo pipefail
out=${1:?usage: sharded_eval.sh <out_dir> <K> <WORKERS> <ehr_eval overrides...>}
k=${2:?K shards}
workers=${3:?WORKERS at a time}
shift 3
PY=${PY:-.venv/bin/python}
mkdir -p "$out"
log() { echo "[sharded_eval $(date -u +%H:%M:%S)] $*" | tee -a "$out/log.txt"; }

run_shard() {
  local i=$1; shift
  [ -f "$out/s$i/report.json" ] && return 0
  rm -rf "$out/s$i.part"
  log "shard $i/$k start"
  if OMP_NUM_THREADS=1 "$PY" ehr_eval.py "$@" baseline=false shard="$i/$k" out_dir="$out/s$i.part" \
      hydra.run.dir="$out/s$i.part/hydra" >"$out/s$i.log" 2>&1 && [ -f "$out/s$i.part/report.json" ]; then
    rm -rf "$out/s$i" && mv "$out/s$i.part" "$out/s$i"
    log "shard $i/$k done ($(grep -o '"sampling_seconds": [0-9.]*' "$out/s$i/report.json"))"
  else
    log "shard $i/$k FAILED: see $out/s$i.log"
    return 1
  fi
}

log "start: K=$k WORKERS=$workers load $(cut -d' ' -f1-3 /proc/loadavg) args: $*"
for ((i = 0; i < k; i++)); do
  while [ "$(jobs -rp | wc -l)" -ge "$workers" ]; do wait -n; done
  run_shard "$i" "$@" &
done
wait
missing=$(for ((i = 0; i < k; i++)); do [ -f "$out/s$i/report.json" ] || echo -n "$i "; done)
if [ -n "$missing" ]; then
  log "not joined: shards ${missing% } are missing (run the same command again)"
  exit 1
fi
[ "${JOIN:-1}" = 0 ] && { log "all $k shards done; JOIN=0, not joined"; exit 0; }
files=$(for ((i = 0; i < k; i++)); do echo -n "$out/s$i/predictions.csv,"; done)
log "joining $k shards into $out/joined"
OMP_NUM_THREADS=1 "$PY" ehr_eval.py "$@" "predictions=[${files%,}]" out_dir="$out/joined" \
  hydra.run.dir="$out/joined/hydra" >"$out/joined.log" 2>&1 || { log "join FAILED: see $out/joined.log"; exit 1; }
log "joined: $out/joined/report.md"
