"""The kill probe of finetune_agent (`reward/probe_auc/latents`) on latent folders, with its spread.

    python scripts/kill_probe_spread.py data/latents [NAME=]OTHER/latents ... --out data/metrics/X.json

The probe is an MLP fitted on pairs of consecutive frames' latents (training clips as the stage
draws them) that scores held-out pairs for a kill. Per folder: its AUC for five probe seeds (mean,
sd) and a bootstrap 95 % interval over the held-out rows (seed 0's scores) -- how far apart two
tokenizers' figures must be before the held-out split (14 episodes, ~76 kills) can tell them apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wm.atomic import write_json_atomic  # noqa: E402
from wm.config import load  # noqa: E402
from wm.probes import probe_scores, roc_auc  # noqa: E402
from wm.stages.finetune_agent import _clips  # noqa: E402
from wm.training.heads import kill_pairs  # noqa: E402


def probe_rows(latents: str, split: str, clip_len: int, seed: int = 0, rows: int | None = None):
    """The kill probe's rows of a split, drawn as finetune_agent draws them (``kill_pairs``)."""
    clips = _clips(latents, split, clip_len, seed, rows) if split == "train" else _clips(latents, split, clip_len)
    pairs = [kill_pairs(b["latents"].float(), b["rewards"]) for b in clips]
    return torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])


def spread(latents: str, params: str = "params.yaml", seeds: int = 5, boots: int = 1000) -> dict:
    cfg = load(params)
    a, clip_len = cfg.agent, cfg.rl.context + cfg.rl.horizon
    torch.manual_seed(a.train.seed)
    xt, yt = probe_rows(latents, "train", clip_len, a.train.seed, a.head_rows)
    xv, yv = probe_rows(latents, "val", clip_len)
    y = yv.numpy()
    scores = [probe_scores(xt.flatten(1), yt, xv.flatten(1), steps=a.probe_steps, seed=s) for s in range(seeds)]
    aucs = [float(roc_auc(s, y)) for s in scores]
    rng = np.random.default_rng(0)
    boot = [roc_auc(scores[0][i], y[i]) for i in (rng.integers(0, len(y), len(y)) for _ in range(boots))]
    return {"train_rows": int(len(yt)), "val_rows": int(len(y)), "val_kills": int(y.sum()), "auc_by_probe_seed": aucs,
            "auc_mean": statistics.fmean(aucs), "auc_sd": statistics.stdev(aucs) if seeds > 1 else None,
            "auc_seed0_bootstrap95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("latents", nargs="+", help="latent folders (wm cache-latents outputs), each as NAME=PATH or PATH")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = {}
    for arg in args.latents:
        name, _, lat = arg.rpartition("=")
        out[name or lat] = spread(lat, args.params, args.seeds)
        print(name or lat, json.dumps({k: v for k, v in out[name or lat].items() if k != "auc_by_probe_seed"}))
    if args.out:
        write_json_atomic(args.out, out)


if __name__ == "__main__":
    main()
