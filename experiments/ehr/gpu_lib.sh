# shellcheck shell=bash
# What the device scripts (gpu_lifelong.sh, gpu_candidates.sh) share; source it after setting
# PY, runs (where candidates train) and out (what comes back).

# ckpt <candidate>: its best checkpoint under $runs, or nothing
ckpt() { ls "$runs/$1"/checkpoints/best-*.ckpt 2>/dev/null | head -1; }

# export_weights <candidate>...: each one's weights (no optimizer state), checkpoint name, run config
# and logs into $out, for scoring elsewhere (the device's outputs do not come back)
export_weights() {
  local g c
  for g in "$@"; do
    c=$(ckpt "$g"); [ -n "$c" ] || continue
    "$PY" -c "import sys; from gptlab.checkpoint import load_checkpoint, save_atomic; c = load_checkpoint(sys.argv[1]); [c.pop(k, None) for k in ('optimizer_states', 'lr_schedulers')]; save_atomic(c, sys.argv[2])" "$c" "$out/$g.ckpt"
    basename "$c" > "$out/$g.ckpt.name"
    cp "$runs/$g/config.yaml" "$out/${g}_config.yaml"
    cp -r "$runs/$g/logs" "$out/${g}_logs" 2>/dev/null
  done
}
