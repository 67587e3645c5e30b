"""train_tokenizer: fit the causal MAE tokenizer on the frame shards, evaluate on held-out
episodes, write metrics (``data/metrics/tokenizer.json``), loss curves (dvclive, under
``data/metrics/tokenizer/``), a reconstruction grid (``data/eval/tokenizer_recon.png``) and
the checkpoint (``tokenizer.out_dir/checkpoint.pt`` + ``config.yaml``)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from wm.atomic import write_json_atomic
from wm.config import Config, to_dict
from wm.data.shards import make_clip_loader, train_batches
from wm.metrics import avgpool2_baseline, psnr, ssim
from wm.models.tokenizer import Tokenizer
from wm.models.transformer import Block
from wm.objectives.mae import TokenizerLoss
from wm.objectives.perceptual import load_lpips
from wm.training.trainer import Trainer

METRICS_PATH = Path("data/metrics/tokenizer.json")
LIVE_DIR = Path("data/metrics/tokenizer")
GRID_PATH = Path("data/eval/tokenizer_recon.png")


def build_tokenizer(cfg: Config) -> Tokenizer:
    return Tokenizer(cfg.tokenizer, cfg.env.height, cfg.env.width)


def val_batches(cfg: Config) -> list[dict[str, torch.Tensor]]:
    """A fixed held-out set: the first ``eval_batches`` unshuffled batches of the val split."""
    t = cfg.tokenizer
    loader = make_clip_loader(cfg.shard.out_dir, "val", t.train.clip_len, t.train.batch_size, shuffle=False,
                              infinite=True)
    return list(itertools.islice(iter(loader), t.eval_batches))


@torch.no_grad()
def evaluate_tokenizer(model: Tokenizer, batches: list[dict[str, torch.Tensor]], lpips_net: Any = None,
                       device: torch.device | None = None) -> dict[str, float]:
    """Unmasked reconstruction quality over ``batches`` (per-frame means)."""
    device = device or next(model.parameters()).device
    p, s, m, base, lp = [], [], [], [], []
    for batch in batches:
        x = batch["frames"].to(device).float() / 255.0
        recon = model(x)[0].float().clamp(0, 1)
        xf, rf = x.flatten(0, 1), recon.flatten(0, 1)
        p.append(psnr(rf, xf))
        s.append(ssim(rf, xf))
        m.append((rf - xf).pow(2).flatten(1).mean(1))
        base.append(psnr(avgpool2_baseline(xf), xf))
        if lpips_net is not None:
            lp.append(lpips_net(rf * 2 - 1, xf * 2 - 1).flatten())
    out = {
        "val/psnr": torch.cat(p).mean().item(),
        "val/ssim": torch.cat(s).mean().item(),
        "val/mse": torch.cat(m).mean().item(),
        "val/avgpool2_psnr": torch.cat(base).mean().item(),
    }
    out["val/lpips"] = torch.cat(lp).mean().item() if lp else None
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
    grid = (torch.cat(rows, dim=1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    img.save(tmp)
    tmp.replace(path)


def _compatible(current: dict[str, Any]):
    def check(saved: dict[str, Any]) -> bool:
        a = {k: v for k, v in saved.get("tokenizer", {}).items() if k != "train"}
        b = {k: v for k, v in current["tokenizer"].items() if k != "train"}
        return a == b and saved.get("env") == current["env"]

    return check


def run(cfg: Config, resume: bool = False) -> dict[str, Any]:
    t = cfg.tokenizer
    start = time.perf_counter()
    lpips_net, pretrained = load_lpips()
    loss_fn = TokenizerLoss(t, lpips_net)
    held_out = val_batches(cfg)

    def data_factory(info, skip: int):
        return train_batches(cfg.shard.out_dir, t.train, info, cfg.data.shuffle_buffer, skip)

    def evaluate(model: torch.nn.Module, step: int) -> dict[str, float]:
        logs = evaluate_tokenizer(model, held_out[: max(1, len(held_out) // 4)])
        return {f"tokenizer/{k}": v for k, v in logs.items() if v is not None and k in ("val/psnr", "val/mse")}

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
    final = evaluate_tokenizer(model, held_out, lpips_net if pretrained else None)
    save_grid(model, held_out[0], GRID_PATH)
    metrics = {
        **final,
        "lpips_pretrained": pretrained,
        "train_steps_per_s": result["train_steps_per_s"],
        "params": result["params"],
        "steps": result["steps"],
        "frames_per_step": t.train.batch_size * t.train.clip_len,
        "wall_s": round(time.perf_counter() - start, 1),
        "latent_shape": [t.n_latents, t.latent_dim],
    }
    write_json_atomic(METRICS_PATH, metrics)
    return metrics
