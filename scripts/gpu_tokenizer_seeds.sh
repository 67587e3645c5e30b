#!/usr/bin/env bash
# The tokenizer's seed spread (#16) measured on a lent GPU: every configuration in CONFIGS is
# trained with every seed in SEEDS, all as parallel processes on the one GPU (the default
# tokenizer, 1.3 M parameters, leaves it mostly idle), fp32 like the 2-core CPU runs, each
# process in its own directory (the stage writes data/metrics/tokenizer.json relative to it).
# The perceptual network's wheel is over the transfer limit, so val/lpips is not scored here.
#
#   OUT=/tmp/x SEEDS="0 1 2 3" bash scripts/gpu_tokenizer_seeds.sh
#
# Inputs: data/shards (the committed run's shards) and the wheels in .whl/ (scripts/gpu_env.sh).
# Outputs in $OUT: seeds.json (per configuration: each seed's final metrics and its val/psnr at
# every evaluation, mean and sd), logs.tar.gz (one log per run) and the fp16 weights of the runs
# named in KEEP (e.g. KEEP="m25_3300/s0 m25_3300/s1").
set -uo pipefail
OUT=${OUT:-/tmp/wm-gpu-tok}
SEEDS=${SEEDS:-"0 1 2 3"}
THREADS=${THREADS:-1}
DEADLINE=${DEADLINE:-520}       # seconds: runs still going then are stopped (their evaluations so far are kept)
# one configuration per line: <name>[:<seed>,<seed>...] <overrides...> (its own seeds instead of SEEDS)
CONFIGS=${CONFIGS:-"default
m25_3300 tokenizer.mask_prob=0.25 tokenizer.train.steps=3300
m25_3300_w600 tokenizer.mask_prob=0.25 tokenizer.train.steps=3300 tokenizer.train.warmup=600
m25_3300_mw4 tokenizer.mask_prob=0.25 tokenizer.train.steps=3300 tokenizer.moving_weight=4"}
export OUT
TQDM_MININTERVAL=${TQDM_MININTERVAL:-30}
source "$(dirname "$0")/gpu_env.sh"
REPO=$PWD
RUN=${RUN:-/tmp/tok-run}
rm -rf "$RUN"
COMMON="shard.out_dir=$REPO/data/shards videos.out_dir=$REPO/data/video_shards tokenizer.lpips_net=none
tokenizer.lpips_weight=0.0 tokenizer.train.precision=fp32 tokenizer.train.threads=$THREADS
tokenizer.train.num_workers=1 tokenizer.train.wandb=disabled tokenizer.out_dir=ckpt"
pids=()
while read -r name overrides; do
  [ -z "$name" ] && continue
  seeds=$SEEDS
  case $name in *:*) seeds=${name#*:}; seeds=${seeds//,/ }; name=${name%%:*} ;; esac  # name:1,3 = own seeds
  for s in $seeds; do
    d="$RUN/$name/s$s"; mkdir -p "$d"
    (cd "$d" && exec timeout "$DEADLINE" python3 -m wm.cli train-tokenizer --params "$REPO/params.yaml" $COMMON tokenizer.train.seed="$s" \
      $overrides >"$OUT/logs/$name-s$s.log" 2>&1) &
    pids+=($!)
  done
done <<<"$CONFIGS"
echo "$(date -u +%T) started ${#pids[@]} processes" | tee -a "$OUT/steps.txt"
t0=$SECONDS
for p in "${pids[@]}"; do wait "$p"; done
echo "$(date -u +%T) all done in $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"  # one file: the transfer counts files
RUN=$RUN KEEP=${KEEP:-} python3 - <<'EOF'
import glob, json, os, statistics as st
run, out = os.environ["RUN"], os.environ["OUT"]
CURVES = ("tokenizer/val/psnr", "tokenizer/val/psnr_moving")
summary = {}
for cfg in sorted(os.listdir(run)):
    seeds = {}
    for d in sorted(glob.glob(f"{run}/{cfg}/s*")):
        rec = {}
        m = f"{d}/data/metrics/tokenizer.json"
        if os.path.exists(m):
            rec["final"] = json.load(open(m))
        curve = {}
        for key in CURVES:  # dvclive's plots, where it is installed
            p = f"{d}/data/metrics/tokenizer/plots/metrics/{key}.tsv"
            if os.path.exists(p):
                rows = [ln.rstrip("\n").split("\t") for ln in open(p)][1:]
                curve[key] = {int(r[0]): round(float(r[1]), 3) for r in rows if len(r) >= 2}
        hist = f"{d}/data/metrics/tokenizer/history.jsonl"  # where dvclive is missing (the GPU image)
        if not curve and os.path.exists(hist):
            for line in open(hist):
                row = json.loads(line)
                for key in CURVES:
                    if key in row:
                        curve.setdefault(key, {})[row["step"]] = round(row[key], 3)
        rec["curve"] = curve
        name = f"{cfg}/{os.path.basename(d)}"
        if name in os.environ.get("KEEP", "").split() and os.path.exists(f"{d}/ckpt/checkpoint.pt"):
            import torch  # the weights (fp16) of the runs named in KEEP, for a look on the CPU machine
            c = torch.load(f"{d}/ckpt/checkpoint.pt", map_location="cpu", weights_only=False)
            sd = {k: v.half() if v.is_floating_point() else v for k, v in c["model"].items()}
            torch.save({"model": sd, "config": c.get("config"), "step": c.get("step")},
                       f"{out}/weights_{cfg}_{os.path.basename(d)}.pt")
        seeds[os.path.basename(d)] = rec
    fin = [r["final"]["val/psnr"] for r in seeds.values() if "final" in r]
    mov = [r["final"]["val/psnr_moving"] for r in seeds.values() if "final" in r]
    summary[cfg] = {"seeds": seeds, "n_finished": len(fin),
                    "val/psnr": fin, "val/psnr_moving": mov,
                    "mean": st.mean(fin) if fin else None, "sd": st.stdev(fin) if len(fin) > 1 else None,
                    "moving_mean": st.mean(mov) if mov else None}
    print(cfg, len(fin), [round(x, 2) for x in fin], summary[cfg]["mean"], summary[cfg]["sd"])
json.dump(summary, open(f"{out}/seeds.json", "w"), indent=1)
EOF
