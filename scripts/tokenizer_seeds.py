"""Seed spread of one tokenizer configuration, as a JSON: for run folders made by

    wm train-tokenizer --workdir RUN tokenizer.out_dir=RUN/ckpt tokenizer.train.seed=S [key=value ...]

each run's figures (RUN/data/metrics/tokenizer.json), its constant latent channels and worst
8x8 patch positions on the held-out frames of the shards it trained on (RUN/ckpt/config.yaml),
and the mean and sd over the runs of val/psnr, val/psnr_moving and val/lpips.

    python scripts/tokenizer_seeds.py RUN [RUN ...] --out data/metrics/tokenizer_seeds_x.json [--what "..."]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from tokenizer_error_map import checkpoint_stats
from wm import config as config_mod
from wm.atomic import write_json_atomic
from wm.stages.train_tokenizer import val_batches
from wm.training.trainer import CHECKPOINT

FIGURES = ("val/psnr", "val/psnr_moving", "val/lpips", "val/ssim", "val/avgpool2_psnr_moving", "train_steps_per_s")


def seed_spread(runs: list[str | Path]) -> dict:
    seeds: dict[str, dict] = {}
    for run in map(Path, runs):
        metrics = json.loads((run / "data" / "metrics" / "tokenizer.json").read_text())
        cfg = config_mod.load(run / "ckpt" / "config.yaml")
        stats = checkpoint_stats(cfg, str(run / "ckpt" / CHECKPOINT), val_batches(cfg))
        patch = stats["patch_rmse"]
        worst = np.argsort(patch, axis=None)[::-1][:3]
        seeds[str(cfg.tokenizer.train.seed)] = {
            **{k: metrics[k] for k in FIGURES if k in metrics},
            "constant_latent_channels": stats["constant_channels"],
            "worst_patches": [{"row": int(i // patch.shape[1]), "col": int(i % patch.shape[1]),
                               "rmse_x1000": round(float(patch.flat[i]) * 1000)} for i in worst],
            "run": str(run),
        }
    out: dict = {"seeds": seeds}
    for k in ("val/psnr", "val/psnr_moving", "val/lpips"):
        vals = [s[k] for s in seeds.values() if k in s]
        if vals:
            out[f"{k}_mean"] = statistics.fmean(vals)
            out[f"{k}_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--what", default="", help="what was run (a sentence kept in the JSON)")
    ap.add_argument("--device", default="", help="the machine the runs were made on")
    args = ap.parse_args()
    out = {"what": args.what, "device": args.device, **seed_spread(args.runs)}
    write_json_atomic(args.out, out)
    print(json.dumps({k: v for k, v in out.items() if k != "seeds"}, indent=1))


if __name__ == "__main__":
    main()
