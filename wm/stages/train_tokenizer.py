"""train_tokenizer: fit the causal MAE tokenizer on the frame shards, evaluate on held-out
episodes, write metrics (``data/metrics/tokenizer.json``), loss curves (dvclive, under
``data/metrics/tokenizer/``), a reconstruction grid (``data/eval/tokenizer_recon.png``) and
the checkpoint (``tokenizer.out_dir/checkpoint.pt`` + ``config.yaml``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from wm.atomic import write_json_atomic
from wm.config import Config, to_dict
from wm.data.held_out import held_out_batches
from wm.data.shards import has_clips, mixed_batches, split_frames, train_batches
from wm.metrics import avgpool2_baseline, masked_sq_error, moving_mask, pooled_psnr, psnr, ssim
from wm.models.tokenizer import Tokenizer
from wm.models.transformer import Block
from wm.objectives.mae import TokenizerLoss
from wm.objectives.perceptual import load_perceptual
from wm.plots import save_png
from wm.training.trainer import Trainer

METRICS_PATH = Path("data/metrics/tokenizer.json")
LIVE_DIR = Path("data/metrics/tokenizer")
GRID_PATH = Path("data/eval/tokenizer_recon.png")
MOVING_PATH = Path("data/eval/tokenizer_moving.png")


def build_tokenizer(cfg: Config) -> Tokenizer:
    return Tokenizer(cfg.tokenizer, cfg.env.height, cfg.env.width)


EVAL_BATCH = 8  # clips per held-out batch, whatever the training batch size


def val_batches(cfg: Config) -> list[dict[str, torch.Tensor]]:
    """train_tokenizer's held-out set (``tokenizer.eval_batches`` 0: the whole val split)."""
    return held_out_batches(cfg.shard.out_dir, cfg.tokenizer.train.clip_len, EVAL_BATCH, cfg.tokenizer.eval_batches)


@torch.no_grad()
def evaluate_tokenizer(model: Tokenizer, batches: list[dict[str, torch.Tensor]], lpips_net: Any = None,
                       device: torch.device | None = None, lpips_every: int = 1) -> dict[str, float]:
    """Unmasked reconstruction quality over ``batches``: per-frame means, and PSNR pooled over the
    moving pixels (frames 2.. of each clip) for the model, the 2x2 blur and the previous frame.
    The perceptual distance (~0.25 GMAC per 64x64 frame and side) scores every ``lpips_every``-th
    batch."""
    device = device or next(model.parameters()).device
    p, s, m, base, lp = [], [], [], [], []
    moving = {"model": [0.0, 0], "avgpool2": [0.0, 0], "repeat": [0.0, 0]}
    values = 0
    for i, batch in enumerate(batches):
        x = batch["frames"].to(device).float() / 255.0
        recon = model(x)[0].float().clamp(0, 1)
        if x.shape[1] > 1:
            prev, cur = x[:, :-1].flatten(0, 1), x[:, 1:].flatten(0, 1)
            mask = moving_mask(prev, cur)
            values += cur.numel()
            for key, pred in (("model", recon[:, 1:].flatten(0, 1)), ("avgpool2", avgpool2_baseline(cur)),
                              ("repeat", prev)):
                sq, n = masked_sq_error(pred, cur, mask)
                moving[key][0] += sq
                moving[key][1] += n
        xf, rf = x.flatten(0, 1), recon.flatten(0, 1)
        p.append(psnr(rf, xf))
        s.append(ssim(rf, xf))
        m.append((rf - xf).pow(2).flatten(1).mean(1))
        base.append(psnr(avgpool2_baseline(xf), xf))
        if lpips_net is not None and i % lpips_every == 0:
            lp.append(lpips_net(rf * 2 - 1, xf * 2 - 1).flatten())
    out = {
        "val/psnr": torch.cat(p).mean().item(),
        "val/ssim": torch.cat(s).mean().item(),
        "val/mse": torch.cat(m).mean().item(),
        "val/avgpool2_psnr": torch.cat(base).mean().item(),
        "val/psnr_moving": pooled_psnr(*moving["model"]),
        "val/avgpool2_psnr_moving": pooled_psnr(*moving["avgpool2"]),
        "val/repeat_psnr_moving": pooled_psnr(*moving["repeat"]),
        "val/moving_frac": moving["model"][1] / max(1, values),
    }
    out["val/lpips"] = torch.cat(lp).mean().item() if lp else None
    out["val/lpips_frames"] = sum(len(v) for v in lp)
    return out


def save_grid(model: Tokenizer, batch: dict[str, torch.Tensor], path: Path, n: int = 8, scale: int = 3) -> None:
    """Held-out frames (top) over their reconstructions (bottom), upscaled for viewing."""
    device = next(model.parameters()).device
    with torch.no_grad():
        x = batch["frames"].to(device).float() / 255.0
        recon = model(x)[0].float().clamp(0, 1)
    real = x.flatten(0, 1)[:n]
    fake = recon.flatten(0, 1)[:n]
    rows = [torch.cat(list(r), dim=2) for r in (real, fake)]  # (3, H, n*W)
    _save_enlarged(torch.cat(rows, dim=1), path, scale)


def _save_enlarged(image: torch.Tensor, path: Path, scale: int) -> None:
    """(3, H, W) in [0, 1] -> a PNG enlarged ``scale`` times (nearest), written atomically."""
    arr = (image.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.Resampling.NEAREST)
    save_png(img, path)


def save_moving_crops(model: Tokenizer, batches: list[dict[str, torch.Tensor]], path: Path, n: int = 8,
                      crop: int = 16, scale: int = 8) -> None:
    """Where small objects live: for the ``n`` held-out frames with the most moving pixels, the
    ``crop``-pixel window with the most moving pixels -- original | reconstruction | moving mask --
    enlarged ``scale`` times, one frame per row."""
    device = next(model.parameters()).device
    cands = []
    with torch.no_grad():
        for batch in batches:
            x = batch["frames"].to(device).float() / 255.0
            if x.shape[1] < 2:
                return
            recon = model(x)[0].float().clamp(0, 1)
            cur, rec = x[:, 1:].flatten(0, 1), recon[:, 1:].flatten(0, 1)
            mask = moving_mask(x[:, :-1].flatten(0, 1), cur)
            for i in range(cur.shape[0]):
                cands.append((int(mask[i].sum()), cur[i], rec[i], mask[i]))
    cands.sort(key=lambda c: -c[0])
    rows = []
    for count, cur, rec, mask in cands[:n]:
        if count == 0:
            break
        # the window that holds the most moving pixels (their centroid can fall between objects)
        density = torch.nn.functional.avg_pool2d(mask.float()[None], crop, stride=1)[0, 0]
        y0, x0 = divmod(int(density.argmax()), density.shape[1])
        win = (slice(None), slice(y0, y0 + crop), slice(x0, x0 + crop))
        sep = torch.ones(3, crop, 1, device=device)
        rows.append(torch.cat([cur[win], sep, rec[win], sep, mask[win].float().expand(3, -1, -1)], dim=2))
    if not rows:
        return
    grid = torch.cat([torch.cat([r, torch.ones(3, 1, r.shape[2], device=device)], dim=1) for r in rows], dim=1)
    _save_enlarged(grid, path, scale)


def _compatible(current: dict[str, Any]):
    def check(saved: dict[str, Any]) -> bool:
        a = {k: v for k, v in saved.get("tokenizer", {}).items() if k != "train"}
        b = {k: v for k, v in current["tokenizer"].items() if k != "train"}
        return a == b and saved.get("env") == current["env"]

    return check


def tokenizer_batches(cfg: Config, info: Any, skip: int = 0):
    """Every frame trains the tokenizer: batches of rollout frames and, when the import_videos
    stage found any, of action-free video frames, in proportion to their frame counts."""
    t = cfg.tokenizer
    rollout_frames = split_frames(cfg.shard.out_dir, "train")
    videos = has_clips(cfg.videos.out_dir, "train", t.train.clip_len)
    video_frames = split_frames(cfg.videos.out_dir, "train") if videos else 0
    if video_frames == 0:
        return train_batches(cfg.shard.out_dir, t.train, info, cfg.data.shuffle_buffer, skip)
    return mixed_batches(train_batches(cfg.shard.out_dir, t.train, info, cfg.data.shuffle_buffer),
                         train_batches(cfg.videos.out_dir, t.train, info, cfg.data.shuffle_buffer),
                         video_frames / (rollout_frames + video_frames), t.train.seed, skip)


def run(cfg: Config, resume: bool = False) -> dict[str, Any]:
    t = cfg.tokenizer
    start = time.perf_counter()
    lpips_net, pretrained = load_perceptual(t.lpips_net)
    loss_fn = TokenizerLoss(t, lpips_net)
    held_out = val_batches(cfg)

    def data_factory(info, skip: int):
        return tokenizer_batches(cfg, info, skip)

    def evaluate(model: torch.nn.Module, step: int) -> dict[str, float]:
        logs = evaluate_tokenizer(model, held_out[::4])  # a quarter, spread over the split
        keep = ("val/psnr", "val/mse", "val/psnr_moving")
        return {f"tokenizer/{k}": v for k, v in logs.items() if v is not None and k in keep}

    run_config = to_dict(cfg)
    trainer = Trainer(
        name="tokenizer", cfg=t.train, model_factory=lambda: build_tokenizer(cfg), loss_fn=loss_fn,
        data_factory=data_factory, out_dir=t.out_dir, run_config=run_config, live_dir=LIVE_DIR,
        evaluate=evaluate, shard_types=(Block,), compatible=_compatible(run_config),
    )
    result = trainer.fit(resume=resume)
    model = trainer.main_process_model()
    if model is None:  # under torchrun, rank 0 evaluates and writes the outputs
        return {}
    # stLPIPS on every 4th held-out batch (~1,600 frames here): on all of them it cost ~100 s on 2 cores
    final = evaluate_tokenizer(model, held_out, lpips_net if pretrained else None, lpips_every=4)
    save_grid(model, held_out[0], GRID_PATH)
    save_moving_crops(model, held_out[:: max(1, len(held_out) // 4)][:4], MOVING_PATH)
    metrics = {
        **final,
        "lpips_pretrained": pretrained,
        "lpips_net": t.lpips_net if lpips_net is not None else None,
        "train_steps_per_s": result["train_steps_per_s"],
        "params": result["params"],
        "steps": result["steps"],
        "frames_per_step": t.train.batch_size * t.train.clip_len,
        "wall_s": round(time.perf_counter() - start + result["earlier_processes_s"], 1),
        "latent_shape": [t.n_latents, t.latent_dim],
    }
    write_json_atomic(METRICS_PATH, metrics)
    return metrics
