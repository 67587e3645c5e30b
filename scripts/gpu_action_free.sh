#!/usr/bin/env bash
# The action-free experiment (`wm action-free`, default preset sizes) on a lent GPU, its arms
# trained at once as separate processes (the 1.9 M-parameter dynamics leaves the GPU mostly
# idle). For every seed in SEEDS (dynamics.train.seed: initialisation, batches, noise and which
# episodes keep their labels) the `full` arm (every action) is trained once and the
# `labeled_plus_video` and `labeled_only` arms once per labelled share in FRACS, so SEEDS="0 1 2"
# FRACS="0.008" runs nine processes. The labelled+video arm trains steps / (1 - video_share) steps
# (action_free.video_steps=matched: as many labelled batches as the other arms' steps, the video
# on top). A short probe of the same processes times a step first, so the longest arm fits in
# BUDGET seconds; if time is left before DEADLINE, `wm bench --preset gpu` runs.
#
#   OUT=/tmp/x BUDGET=330 SEEDS="0 1 2" FRACS="0.008" THREADS=1 bash scripts/gpu_action_free.sh
#
# Inputs (`python scripts/gpu_inputs.py` on the CPU machine, carried as ignored paths): data/latents (the committed
# run's latents), .gpu/tokenizer (the committed tokenizer's weights) and .gpu/shards (the
# held-out shards and two training shards: the evaluation reads frames from them); SHARDS and
# TOKENIZER point elsewhere (a CPU smoke run: data/shards, data/checkpoints/tokenizer). Outputs
# in $OUT: steps.txt; results.tar.gz with every arm's directory less its weights (metrics, arm.json,
# held-out errors, plots), summaries/action_free_s<seed>_f<share>.json (one summary per seed and
# share), summaries/action_free_seeds.json (mean and sd over the seeds, the acceptance checks) and
# logs/; the first seed's weights, ckpt_full.pt and ckpt_f<share>_<arm>.pt; bench.json if time was left.
# STEPS=<n> skips the probe and trains n steps per arm; ARMS_LIMIT=<s> stops unfinished arms after s
# seconds (their summaries are skipped; steps.txt says how far each got); KEEP_RUN=1 keeps the arm
# directories a previous call left on a warm machine, so their arms resume (finished ones are reused).
# Measured on an H200 (session 22): nine processes at once train 6.3-8.2 steps/s each, so the
# 5,200-step video arm needs ~11 min: more than one 10-minute call.
set -uo pipefail
OUT=${OUT:-/tmp/wm-gpu-af}
BUDGET=${BUDGET:-330}           # seconds for the arms, evaluation included
MAX_STEPS=${MAX_STEPS:-8000}
PROBE_STEPS=${PROBE_STEPS:-150}
MIN_STEPS=${MIN_STEPS:-100}
FRACS=${FRACS:-0.008}           # labelled shares (action_free.labeled_frac), space-separated
SEEDS=${SEEDS:-0}               # dynamics.train.seed of every arm, space-separated
THREADS=${THREADS:-3}           # CPU threads per process
SHARDS=${SHARDS:-.gpu/shards}
TOKENIZER=${TOKENIZER:-.gpu/tokenizer}
EXTRA=${EXTRA:-}                # more overrides, e.g. action_free.eval_clips=2 for a smoke run
export OUT
TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}
source "$(dirname "$0")/gpu_env.sh"
DATA="latents.out_dir=data/latents shard.out_dir=$SHARDS tokenizer.out_dir=$TOKENIZER dynamics.train.threads=$THREADS $EXTRA"
# how many times the steps the longest arm (labelled+video, matched) trains
MULT=$(python3 -c "
from wm.config import load
from wm.stages.train_dynamics import arm_steps
c = load('params.yaml', '$EXTRA'.split())
print(arm_steps(c.action_free, c.dynamics, 'labeled_plus_video') / c.action_free.steps)")
# one line per process: <seed> <labelled share> <arm>; the full arm does not depend on the share
JOBS="$(for s in $SEEDS; do echo "$s x full"; for f in $FRACS; do echo "$s $f labeled_plus_video"
  echo "$s $f labeled_only"; done; done)"
dir_of() { [ "$2" = full ] && echo "$1/s$3/full" || echo "$1/s$3/f$4"; }
arms() {  # arms ROOT STEPS LOGTAG: every job in parallel; returns when all are done
  local root=$1 steps=$2 tag=$3 pids=() s f arm frac
  while read -r s f arm; do
    frac=$f; [ "$arm" = full ] && frac=1  # every episode labelled
    python3 -m wm.cli action-free $DATA dynamics.train.seed="$s" \
      action_free.out_dir="$(dir_of "$root" "$arm" "$s" "$f")" action_free.steps="$steps" \
      action_free.labeled_frac="$frac" action_free.arm="$arm" >"$OUT/logs/$tag-s$s-f$f-$arm.log" 2>&1 &
    pids+=($!)
  done <<<"$JOBS"
  local rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}
# a warm machine keeps the last call's files: start from empty arm directories (an arm that
# finished there would otherwise be reused, whatever its steps)
RUN=${RUN:-/tmp/af-run}
[ -n "${KEEP_RUN:-}" ] || rm -rf /tmp/af-probe "$RUN"  # KEEP_RUN=1: resume the arms a previous call left on a warm machine
if [ -n "${STEPS:-}" ]; then  # the steps are given (e.g. the DVC stage's action_free.steps): no probe
  echo "steps given: $STEPS per arm (longest arm x$MULT), $(echo "$JOBS" | wc -l) processes" | tee -a "$OUT/steps.txt"
else
  t0=$SECONDS
  arms /tmp/af-probe "$PROBE_STEPS" probe
  probe=$((SECONDS - t0))
  per_step=$(python3 -c "import glob, json; print(max(1/json.load(open(p))['train_steps_per_s'] for p in glob.glob('/tmp/af-probe/*/*/*/data/metrics/dynamics.json')))")
  # the arms' evaluation and start-up cost about what the probe spent beside its longest arm's steps
  fixed=$(python3 -c "print(max(0.0, $probe - $PROBE_STEPS * $MULT * $per_step))")
  STEPS=$(python3 -c "print(min($MAX_STEPS, max($MIN_STEPS, int(($BUDGET - $fixed) / ($per_step * $MULT)) // $MIN_STEPS * $MIN_STEPS)))")
  echo "probe $PROBE_STEPS steps (longest arm x$MULT), $(echo "$JOBS" | wc -l) processes: ${probe}s (s/step $per_step, fixed ${fixed}s) -> $STEPS steps per arm" | tee -a "$OUT/steps.txt"
fi
t1=$SECONDS
# ARMS_LIMIT: seconds after which unfinished arms are stopped, so that the summaries and the files
# of the finished ones still come back inside the call
timeout "${ARMS_LIMIT:-100000}" bash -c "$(declare -f arms dir_of); JOBS='$JOBS' DATA='$DATA' OUT='$OUT'; arms '$RUN' '$STEPS' run"
echo "arms rc=$? wall_s=$((SECONDS - t1))" | tee -a "$OUT/steps.txt"
progress() {  # the last step each arm reached (its newest checkpoint), for a run stopped early
  python3 - "$RUN" <<'PY' | tee -a "$OUT/steps.txt"
import glob, sys, torch
for p in sorted(glob.glob(f"{sys.argv[1]}/**/checkpoint/checkpoint.pt", recursive=True)):
    print("checkpoint", p.removeprefix(sys.argv[1]), "step", torch.load(p, map_location="cpu", weights_only=False).get("step"))
PY
}
progress
mkdir -p "$OUT/summaries"
finished() { [ -f "$1/data/metrics/dynamics.json" ]; }
for s in $SEEDS; do for f in $FRACS; do  # each seed and share: its two arms and the seed's full arm
  mkdir -p "$RUN/s$s/f$f" && ln -sfn ../full/full "$RUN/s$s/f$f/full"  # the shared arm, linked, not copied
  if ! { finished "$RUN/s$s/f$f/full" && finished "$RUN/s$s/f$f/labeled_plus_video" && finished "$RUN/s$s/f$f/labeled_only"; }; then
    echo "summary s$s f$f skipped: an arm did not finish" | tee -a "$OUT/steps.txt"; continue  # it would train it
  fi
  python3 -m wm.cli action-free $DATA dynamics.train.seed="$s" action_free.out_dir="$RUN/s$s/f$f" \
    action_free.steps="$STEPS" action_free.labeled_frac="$f" >"$OUT/logs/summary-s$s-f$f.log" 2>&1
  echo "summary s$s f$f rc=$?" | tee -a "$OUT/steps.txt"
  cp "$RUN/s$s/f$f/action_free.json" "$OUT/summaries/action_free_s${s}_f$f.json" 2>/dev/null
  cp "$RUN/s$s/f$f/action_free_heldout.png" "$OUT/summaries/action_free_heldout_s${s}_f$f.png" 2>/dev/null
done; done
python3 scripts/action_free_seeds.py "$OUT"/summaries/action_free_s*_f*.json --out "$OUT/summaries/action_free_seeds.json" \
  >>"$OUT/steps.txt" 2>&1
# the first seed's weights, one file per arm (each under the 16 MiB a returned file may have): with
# results.tar.gz's arm directories they rebuild that seed's arms, e.g. as data/action_free for the DVC stage
FIRST=${SEEDS%% *} RUN=$RUN python3 - <<'EOF'
import glob, os, torch
run, out = os.environ["RUN"], os.environ["OUT"]
for p in sorted(glob.glob(os.path.join(run, f"s{os.environ['FIRST']}/*/*/checkpoint/checkpoint.pt"))):
    share, arm = p.split("/")[-4:-2]
    if share != "full" and arm == "full":
        continue  # a share's link to the full arm
    c = torch.load(p, map_location="cpu", weights_only=False)
    c.pop("optimizer", None)  # weights, config and step: what evaluation and `dvc commit` need
    torch.save(c, os.path.join(out, "ckpt_full.pt" if arm == "full" else f"ckpt_{share}_{arm}.pt"))
EOF
left=$((${DEADLINE:-540} - SECONDS))
if [ "$left" -gt 150 ]; then
  timeout $((left - 20)) python3 -m wm.cli bench --preset gpu --skip collect,generation,loader --seconds 3 \
    --out "$OUT/bench.json" >"$OUT/logs/bench.log" 2>&1
  echo "bench rc=$? left_s=$left" | tee -a "$OUT/steps.txt"
fi
# every arm's directory less its weights (metrics, arm.json, held-out errors, plots), the summaries, the logs
tar -czf "$OUT/results.tar.gz" --exclude=checkpoint.pt -C "$RUN" . -C "$OUT" summaries logs && rm -rf "$OUT/logs" "$OUT/summaries"
cat "$OUT/steps.txt"
