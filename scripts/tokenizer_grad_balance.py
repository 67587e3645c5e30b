"""How the tokenizer's loss terms pull on the weights: the gradient norm of each term as it is
trained (the moving-weighted MSE and the perceptual distance, each divided by its own value, as
the running-RMS normalisation does once settled), their ratio and their cosine similarity.

    python scripts/tokenizer_grad_balance.py data/checkpoints/tokenizer --batches 6

A ratio far above 1 means a `tokenizer.lpips_weight` of 1/ratio already gives the perceptual
term as much of each (clipped) update as the MSE; a cosine near 0 means it pulls elsewhere.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys

import torch


def grad_balance(ckpt_dir: str, shard_dir: str, params: str = "params.yaml", batches: int = 6,
                 seed: int = 3) -> dict[str, float]:
    from wm.config import load
    from wm.data.shards import make_clip_loader
    from wm.objectives.mae import perceptual_distance, reconstruction_error, sample_patch_mask
    from wm.objectives.perceptual import load_perceptual
    from wm.world_model import load_tokenizer

    t = load(params).tokenizer
    tok, _ = load_tokenizer(ckpt_dir)
    tok.train().requires_grad_(True)
    net, _ = load_perceptual(t.lpips_net if t.lpips_net != "none" else "stlpips_alex")
    if net is None:
        raise SystemExit(f"no perceptual network for {t.lpips_net} on this machine")
    weights = [p for p in tok.parameters() if p.requires_grad]
    torch.manual_seed(seed)
    loader = make_clip_loader(shard_dir, "train", t.train.clip_len, t.train.batch_size, seed=seed, infinite=True)
    rows = []
    for batch in itertools.islice(iter(loader), batches):
        x = batch["frames"].float() / 255
        b, n = x.shape[:2]
        mask = sample_patch_mask(b, n, tok.n_patches, t.mask_max, x.device, t.mask_prob)
        recon, _ = tok(x, mask)
        mse, _ = reconstruction_error(recon, x, t.moving_weight, t.hard_frac, t.hard_weight)
        lp = perceptual_distance(net, recon, x, torch.randperm(b * n)[: t.lpips_frames])
        g_mse = torch.autograd.grad(mse / mse.detach(), weights, retain_graph=True)
        g_lp = [g if g is not None else torch.zeros_like(p)
                for g, p in zip(torch.autograd.grad(lp / lp.detach(), weights, allow_unused=True), weights)]
        n_mse = torch.sqrt(sum((g**2).sum() for g in g_mse))
        n_lp = torch.sqrt(sum((g**2).sum() for g in g_lp))
        cos = sum((a * c).sum() for a, c in zip(g_mse, g_lp)) / (n_mse * n_lp).clamp_min(1e-12)
        rows.append({"grad_mse": n_mse.item(), "grad_lpips": n_lp.item(), "ratio": (n_lp / n_mse).item(),
                     "cos": cos.item(), "mse": mse.item(), "lpips": lp.item()})
    return {"batches": len(rows), "ratio_mean": statistics.fmean(r["ratio"] for r in rows),
            "ratio_min": min(r["ratio"] for r in rows), "ratio_max": max(r["ratio"] for r in rows),
            "cos_mean": statistics.fmean(r["cos"] for r in rows), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a tokenizer checkpoint directory")
    parser.add_argument("--shards", default="data/shards")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--batches", type=int, default=6)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = grad_balance(args.checkpoint, args.shards, args.params, args.batches)
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
