#!/usr/bin/env bash
# The action-free experiment (`wm action-free`, default preset sizes) on a lent GPU, its arms
# trained at once as separate processes (the 1.9 M-parameter dynamics leaves the GPU mostly
# idle). FRACS lists labelled shares: the `full` arm (every action) is trained once and the
# `labeled_plus_video` and `labeled_only` arms once per share, so "0.02 0.05" runs five
# processes. A short probe of the same processes times a step first, so the arms get as many
# steps as fit in BUDGET seconds; if time is left before DEADLINE, `wm bench --preset gpu` runs.
#
#   OUT=/tmp/x BUDGET=330 FRACS="0.1" bash scripts/gpu_action_free.sh
#
# Inputs (prepared on the CPU machine, carried as ignored paths): data/latents (the committed
# run's latents), .gpu/tokenizer (the committed tokenizer, weights only) and .gpu/shards (the
# held-out shards and two training shards: the evaluation reads frames from them). Outputs in
# $OUT: action_free_f<share>.json (one summary per share), each arm's metrics and plots
# (arms.tar.gz) and weights (ckpt_f<share>_<arm>.pt, ckpt_full.pt), logs.tar.gz, steps.txt.
set -uo pipefail
OUT=${OUT:-/tmp/wm-gpu-af}
BUDGET=${BUDGET:-330}           # seconds for the arms, evaluation included
MAX_STEPS=${MAX_STEPS:-8000}
PROBE_STEPS=${PROBE_STEPS:-150}
FRACS=${FRACS:-0.1}             # labelled shares (action_free.labeled_frac), space-separated
THREADS=${THREADS:-3}           # CPU threads per process
EXTRA=${EXTRA:-}                # more overrides, e.g. action_free.eval_clips=2 for a smoke run
export OUT
TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}
source "$(dirname "$0")/gpu_env.sh"
DATA="latents.out_dir=data/latents shard.out_dir=.gpu/shards tokenizer.out_dir=.gpu/tokenizer dynamics.train.threads=$THREADS $EXTRA"
# one line per process: <labelled share> <arm>; the full arm does not depend on the share
JOBS="$(echo "x full"; for f in $FRACS; do echo "$f labeled_plus_video"; echo "$f labeled_only"; done)"
dir_of() { [ "$2" = full ] && echo "$1/full" || echo "$1/f$3"; }
arms() {  # arms ROOT STEPS LOGTAG: every job in parallel; returns when all are done
  local root=$1 steps=$2 tag=$3 pids=() f arm frac
  while read -r f arm; do
    frac=$f; [ "$arm" = full ] && frac=1  # every episode labelled
    python3 -m wm.cli action-free $DATA action_free.out_dir="$(dir_of "$root" "$arm" "$f")" \
      action_free.steps="$steps" action_free.labeled_frac="$frac" action_free.arm="$arm" \
      >"$OUT/logs/$tag-f$f-$arm.log" 2>&1 &
    pids+=($!)
  done <<<"$JOBS"
  local rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}
# a warm machine keeps the last call's files: start from empty arm directories (an arm that
# finished there would otherwise be reused, whatever its steps)
RUN=${RUN:-/tmp/af-run}
rm -rf /tmp/af-probe "$RUN"
t0=$SECONDS
arms /tmp/af-probe "$PROBE_STEPS" probe
probe=$((SECONDS - t0))
per_step=$(python3 -c "import glob, json; print(max(1/json.load(open(p))['train_steps_per_s'] for p in glob.glob('/tmp/af-probe/*/*/data/metrics/dynamics.json')))")
# the arms' evaluation and start-up cost about what the probe spent beside its steps
fixed=$(python3 -c "print(max(0.0, $probe - $PROBE_STEPS * $per_step))")
STEPS=$(python3 -c "print(min($MAX_STEPS, max(100, int(($BUDGET - $fixed) / $per_step) // 100 * 100)))")
echo "probe $PROBE_STEPS steps, $(echo "$JOBS" | wc -l) processes: ${probe}s (s/step $per_step, fixed ${fixed}s) -> $STEPS steps per arm" | tee -a "$OUT/steps.txt"
t1=$SECONDS
arms "$RUN" "$STEPS" run
echo "arms rc=$? wall_s=$((SECONDS - t1))" | tee -a "$OUT/steps.txt"
for f in $FRACS; do  # the summary of each share: its two arms and the shared full arm
  mkdir -p "$RUN/f$f" && ln -sfn ../full/full "$RUN/f$f/full"  # the shared arm, linked, not copied
  python3 -m wm.cli action-free $DATA action_free.out_dir="$RUN/f$f" action_free.steps="$STEPS" \
    action_free.labeled_frac="$f" >"$OUT/logs/summary-f$f.log" 2>&1
  echo "summary f$f rc=$?" | tee -a "$OUT/steps.txt"
  cp data/metrics/action_free.json "$OUT/action_free_f$f.json" 2>/dev/null
done
RUN=$RUN python3 - <<'EOF'
import glob, os, torch
for p in glob.glob(os.path.join(os.environ["RUN"], "*/*/checkpoint/checkpoint.pt")):
    share, arm = p.split("/")[-4:-2]
    if share != "full" and arm == "full":
        continue  # a share's link to the full arm
    c = torch.load(p, map_location="cpu", weights_only=False)
    c.pop("optimizer", None)  # weights, config and step: what evaluation and `dvc commit` need
    name = "ckpt_full.pt" if arm == "full" else f"ckpt_{share}_{arm}.pt"
    torch.save(c, os.path.join(os.environ["OUT"], name))
EOF
tar -czf "$OUT/arms.tar.gz" --exclude=checkpoint.pt -C "$RUN" .
left=$((${DEADLINE:-540} - SECONDS))
if [ "$left" -gt 150 ]; then
  timeout $((left - 20)) python3 -m wm.cli bench --preset gpu --skip collect,generation,loader --seconds 3 \
    --out "$OUT/bench.json" >"$OUT/logs/bench.log" 2>&1
  echo "bench rc=$? left_s=$left" | tee -a "$OUT/steps.txt"
fi
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
cat "$OUT/steps.txt"
for f in "$OUT"/action_free_f*.json; do echo "$f"; cat "$f"; done
