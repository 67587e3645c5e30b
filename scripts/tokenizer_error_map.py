"""Where a tokenizer loses detail: for each checkpoint (comma-separated paths; full checkpoints or
the fp16 weights scripts/gpu_tokenizer_seeds.sh returns), on the held-out batches of params.yaml's
shards: mean val/psnr, per-frame PSNR quantiles, the RMSE of each 8x8 patch position (x1000), the
latent channels that stay constant (sd < 0.05 over the frames) and a PNG of the per-pixel RMSE of
all checkpoints side by side.

    python scripts/tokenizer_error_map.py A.pt,B.pt [--out data/eval/x.png] [key=value ...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from wm import config as config_mod
from wm.config import Config
from wm.metrics import psnr
from wm.stages.train_tokenizer import build_tokenizer, val_batches
from wm.training.trainer import load_trained


def checkpoint_stats(cfg: Config, path: str, batches: list[dict[str, torch.Tensor]]) -> dict:
    """The tokenizer at ``path`` on ``batches``: ``psnr`` (per-frame values), ``patch_rmse``
    (per patch position), ``constant_channels`` (latent channels with sd < 0.05), ``pixel_rmse``."""
    model = build_tokenizer(cfg)
    load_trained(model, path)
    model.eval()
    sq, frames, zs, ps = 0.0, 0, [], []
    with torch.no_grad():
        for b in batches:
            x = b["frames"].float() / 255
            z = model.encode(x)
            r = model.decode(z).clamp(0, 1)
            sq = sq + (r - x).pow(2).sum((0, 1))  # (3, H, W)
            frames += x.shape[0] * x.shape[1]
            zs.append(z.flatten(0, 1))
            ps.append(psnr(r.flatten(0, 1), x.flatten(0, 1)))
    pixel = sq.mean(0) / frames
    patch = torch.nn.functional.avg_pool2d(pixel[None, None], cfg.tokenizer.patch)[0, 0]
    return {"psnr": torch.cat(ps).numpy(), "patch_rmse": patch.sqrt().numpy(),
            "constant_channels": int((torch.cat(zs).std(0) < 0.05).sum()), "pixel_rmse": pixel.sqrt()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="/tmp/tokenizer_error_map.png")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = config_mod.load(args.params, args.overrides)
    batches = val_batches(cfg)
    maps = []
    for path in args.checkpoints.split(","):
        s = checkpoint_stats(cfg, path, batches)
        p = s["psnr"]
        print(f"{path}: val/psnr {p.mean():.2f}, per-frame q5/25/50/75/95 {np.round(np.percentile(p, [5, 25, 50, 75, 95]), 2)}, "
              f"constant latent channels {s['constant_channels']}")
        print("  patch RMSE x1000:\n", (s["patch_rmse"] * 1000).round().astype(int))
        maps.append(s["pixel_rmse"])
    img = torch.cat(maps, 1)
    arr = (img / img.max()).numpy() * 255
    Image.fromarray(arr.astype(np.uint8)).resize((arr.shape[1] * 4, arr.shape[0] * 4), Image.NEAREST).save(args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
