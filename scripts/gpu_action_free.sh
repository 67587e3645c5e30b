#!/usr/bin/env bash
# The action-free experiment (`wm action-free`, default preset sizes) on a lent GPU, its three
# arms trained at once as three processes (the 1.9 M-parameter dynamics leaves an H100 mostly
# idle). A short probe of the same three processes times a step first, so the arms get as many
# steps as fit in BUDGET seconds; if time is left, `wm bench --preset gpu` runs after them.
#
#   OUT=/tmp/x BUDGET=330 bash scripts/gpu_action_free.sh
#
# Inputs (prepared on the CPU machine, carried as ignored paths): data/latents (the committed
# run's latents), .gpu/tokenizer (the committed tokenizer, weights only) and .gpu/shards (the
# held-out shards and two training shards: the evaluation reads frames from them). Outputs in
# $OUT: action_free.json, each arm's metrics/plots (arms.tar.gz) and weights (ckpt_<arm>.pt),
# logs.tar.gz, steps.txt.
set -uo pipefail
OUT=${OUT:-/tmp/wm-gpu-af}
BUDGET=${BUDGET:-330}        # seconds for the three arms, evaluation included
MAX_STEPS=${MAX_STEPS:-8000}
PROBE_STEPS=${PROBE_STEPS:-150}
EXTRA=${EXTRA:-}                # more overrides, e.g. action_free.eval_clips=2 for a smoke run
export OUT
TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}
source "$(dirname "$0")/gpu_env.sh"
DATA="latents.out_dir=data/latents shard.out_dir=.gpu/shards tokenizer.out_dir=.gpu/tokenizer dynamics.train.threads=4 $EXTRA"
ARMS="full labeled_plus_video labeled_only"
arms() {  # arms DIR STEPS LOGTAG: the three arms in parallel; returns when all are done
  local dir=$1 steps=$2 tag=$3 pids=()
  for arm in $ARMS; do
    python3 -m wm.cli action-free $DATA action_free.out_dir="$dir" action_free.steps="$steps" \
      action_free.arm="$arm" >"$OUT/logs/$tag-$arm.log" 2>&1 &
    pids+=($!)
  done
  local rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}
t0=$SECONDS
arms /tmp/af-probe "$PROBE_STEPS" probe
probe=$((SECONDS - t0))
per_step=$(python3 -c "import json; print(max(1/json.load(open(f'/tmp/af-probe/{a}/data/metrics/dynamics.json'))['train_steps_per_s'] for a in '$ARMS'.split()))")
# the arms' evaluation and start-up cost about what the probe spent beside its steps
fixed=$(python3 -c "print(max(0.0, $probe - $PROBE_STEPS * $per_step))")
STEPS=$(python3 -c "print(min($MAX_STEPS, max(100, int(($BUDGET - $fixed) / $per_step) // 100 * 100)))")
echo "probe $PROBE_STEPS steps: ${probe}s (s/step $per_step, fixed ${fixed}s) -> $STEPS steps per arm" | tee -a "$OUT/steps.txt"
t1=$SECONDS
arms data/action_free "$STEPS" run && python3 -m wm.cli action-free $DATA action_free.steps="$STEPS" >"$OUT/logs/summary.log" 2>&1
echo "arms rc=$? wall_s=$((SECONDS - t1))" | tee -a "$OUT/steps.txt"
cp data/metrics/action_free.json "$OUT/" 2>/dev/null
ARMS=$ARMS python3 - <<'EOF'
import os, torch
for arm in os.environ["ARMS"].split():
    c = torch.load(f"data/action_free/{arm}/checkpoint/checkpoint.pt", map_location="cpu", weights_only=False)
    c.pop("optimizer", None)  # weights, config and step: what evaluation and `dvc commit` need
    torch.save(c, os.path.join(os.environ["OUT"], f"ckpt_{arm}.pt"))
EOF
tar -czf "$OUT/arms.tar.gz" --exclude=checkpoint.pt data/action_free
left=$((${DEADLINE:-540} - SECONDS))
if [ "$left" -gt 150 ]; then
  timeout $((left - 20)) python3 -m wm.cli bench --preset gpu --skip collect,generation,loader --seconds 3 \
    --out "$OUT/bench.json" >"$OUT/logs/bench.log" 2>&1
  echo "bench rc=$? left_s=$left" | tee -a "$OUT/steps.txt"
fi
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
cat "$OUT/steps.txt"
