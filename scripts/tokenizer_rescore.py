"""Tokenizer checkpoints scored on the whole held-out split, the same clips for every one.

    python scripts/tokenizer_rescore.py NAME=CKPT_DIR [NAME=CKPT_DIR ...] --out X.json [--what "..."]

Until session 26, train_tokenizer's figures came from its first 16 unshuffled val batches of
`train.batch_size` clips: at batch 8, 128 clips of 4 frames cut from 8 consecutive chunks of a few
episodes, and a run at another batch size was scored on other clips (the stage now scores the
whole split). Here every checkpoint (a folder with checkpoint.pt and config.yaml, as
train_tokenizer writes) is scored with the stage's own held-out set (`held_out_batches`: every
whole clip of the val split, `--clip-len` frames, batches of 8) and `evaluate_tokenizer`, so runs
of any batch size, seed, loss or commit compare on the same frames. The shards are those of the
first checkpoint's config.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from wm import config as config_mod
from wm.atomic import write_json_atomic
from wm.data.held_out import held_out_batches
from wm.stages.train_tokenizer import EVAL_BATCH, build_tokenizer, evaluate_tokenizer
from wm.training.trainer import CHECKPOINT, load_trained

FIGURES = ("val/psnr", "val/psnr_moving", "val/avgpool2_psnr_moving", "val/repeat_psnr_moving", "val/ssim")


def rescore(runs: dict[str, str], clip_len: int = 4) -> dict:
    out: dict = {}
    batches = None
    for name, run in runs.items():
        cfg = config_mod.load(Path(run) / "config.yaml")
        if batches is None:
            batches = held_out_batches(cfg.shard.out_dir, clip_len, EVAL_BATCH)
            out["clips"] = sum(len(b["frames"]) for b in batches)
            out["shards"] = cfg.shard.out_dir
        model = build_tokenizer(cfg)
        load_trained(model, Path(run) / CHECKPOINT)
        figures = evaluate_tokenizer(model.eval(), batches)
        out[name] = {k: figures[k] for k in FIGURES} | {"run": run, "seed": cfg.tokenizer.train.seed}
        print(name, json.dumps({k: round(v, 3) for k, v in figures.items() if k in FIGURES}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="checkpoint folders as NAME=DIR")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--clip-len", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--what", default="", help="what was run (a sentence kept in the JSON)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {}
    for arg in args.runs:
        name, _, path = arg.rpartition("=")
        runs[name or path] = path
    write_json_atomic(args.out, {"what": args.what, **rescore(runs, args.clip_len)})


if __name__ == "__main__":
    main()
