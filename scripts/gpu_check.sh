#!/usr/bin/env bash
# One device session, prepared ahead (device time is short): the gpu-marked tests, `wm bench`
# at the gpu preset (bf16 autocast, torch.compile, synchronised timing, MFU), and a short
# gpu-preset training run (tokenizer -> latent cache -> dynamics) on the committed default
# run's shards. Results land in $OUT (default /tmp/wm-gpu-check); copy them to
# data/metrics/gpu/<card>/ and commit. Every step has its own time limit and the script goes
# on past a failed step, so one failure does not cost the rest.
#
#   OUT=/tmp/x PRESET=gpu TOK_STEPS=400 DYN_STEPS=400 bash scripts/gpu_check.sh
#
# Python packages the GPU image lacks travel as wheels in .whl/ (see README, "GPU check").
set -uo pipefail
OUT=${OUT:-/tmp/wm-gpu-check}
PRESET=${PRESET:-gpu}
TOK_STEPS=${TOK_STEPS:-400}
DYN_STEPS=${DYN_STEPS:-400}
BENCH_SECONDS=${BENCH_SECONDS:-5}
BENCH_SKIP=${BENCH_SKIP:-collect}        # the GPU image has no emulator
STEPS=${STEPS:-"gpu_tests debug_chain train_tokenizer cache_latents train_dynamics bench"}
# the perceptual network's wheel (stlpips-pytorch, 64 MB) is over the transfer limit with the shards
TOK_EXTRA=${TOK_EXTRA:-"tokenizer.lpips_net=none tokenizer.lpips_weight=0.0"}
# the committed default data are chunked in 64 frames: the gpu preset's 128-frame long phase needs
# the gpu preset's own collection, so the short run trains the long phase on 64
DYN_EXTRA=${DYN_EXTRA:-"dynamics.long_len=64"}
source "$(dirname "$0")/gpu_env.sh"
WM="python3 -m wm.cli"
step() {  # step NAME SECONDS CMD...: time-limited, logged, never fatal
  local name=$1 secs=$2; shift 2
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  local t0=$SECONDS
  timeout "$secs" "$@" >"$OUT/logs/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc wall_s=$((SECONDS - t0))" | tee -a "$OUT/steps.txt"
  tail -n 4 "$OUT/logs/$name.log"
}
step gpu_tests 60 python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/test_gpu.py
# every training stage at debug sizes on the GPU (placement: models, latents and generators on
# one device), imagination RL included; the emulator stages (collect, evaluate) cannot run there
export WM TOK_EXTRA OUT
step debug_chain 150 bash -c 'set -e; for s in train-tokenizer cache-latents train-dynamics finetune-agent imagine-rl; do
  echo "== $s"; $WM $s --preset debug $TOK_EXTRA; done; cp data/metrics/imagine_rl.json "$OUT/debug_imagine_rl.json"'
TOK="tokenizer.train.steps=$TOK_STEPS tokenizer.train.eval_every=$TOK_STEPS tokenizer.train.ckpt_every=$TOK_STEPS"
step train_tokenizer 100 $WM train-tokenizer --preset "$PRESET" $TOK $TOK_EXTRA
step cache_latents 40 $WM cache-latents --preset "$PRESET"
DYN="dynamics.train.steps=$DYN_STEPS dynamics.train.eval_every=$DYN_STEPS dynamics.train.ckpt_every=$DYN_STEPS"
step train_dynamics 150 $WM train-dynamics --preset "$PRESET" $DYN $DYN_EXTRA
step bench 120 $WM bench --preset "$PRESET" --skip "$BENCH_SKIP" --seconds "$BENCH_SECONDS" --out "$OUT/bench.json"
for m in tokenizer cache_latents dynamics; do
  [ -f "data/metrics/$m.json" ] && cp "data/metrics/$m.json" "$OUT/run_$m.json"
done
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
cat "$OUT/steps.txt"
