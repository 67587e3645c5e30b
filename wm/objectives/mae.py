"""Tokenizer objective (Dreamer 4 §tokenizer): masked autoencoding, MSE + 0.2 * LPIPS.

- Each frame draws its own mask ratio p ~ U(0, mask_max) (paper: 0.9) and hides that
  fraction of its patches from the encoder (the model swaps in a learned mask token).
  ``mask_prob`` < 1 leaves a share of frames unmasked (a deviation from the paper, which
  masks every frame; measured on 2 CPU cores, fully masked training sits on a blurry
  plateau far longer, see the tokenizer notes in the README).
- The reconstruction of the *whole* frame is scored, masked and visible patches alike.
- Each loss term is divided by a running RMS of its own magnitude, so MSE and LPIPS
  contribute on equal footing whatever their scales (the 0.2 then sets LPIPS's share).
"""

from __future__ import annotations

import torch
from torch import nn

from wm.config import TokenizerConfig
from wm.errors import ConfigValueError


class RunningRMS(nn.Module):
    """Exponential moving RMS of a scalar; ``normalize`` divides by it (no gradient through it)."""

    def __init__(self, decay: float):
        super().__init__()
        self.decay = decay
        self.register_buffer("sq", torch.zeros(()))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def normalize(self, value: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                v = value.detach().float() ** 2
                self.sq.copy_(v if self.count == 0 else self.decay * self.sq + (1 - self.decay) * v)
                self.count += 1
        return value / self.sq.sqrt().clamp_min(1e-8)


def sample_patch_mask(batch: int, time: int, n_patches: int, mask_max: float, device: torch.device,
                      mask_prob: float = 1.0) -> torch.Tensor:
    """(B, T, N) bool, True = hidden. A frame is masked with probability ``mask_prob`` (paper:
    1.0), and a masked frame hides a ratio ~ U(0, mask_max) of its patches."""
    ratio = torch.rand(batch, time, 1, device=device) * mask_max
    ratio = torch.where(torch.rand(batch, time, 1, device=device) < mask_prob, ratio, torch.zeros_like(ratio))
    return torch.rand(batch, time, n_patches, device=device) < ratio


def reconstruction_error(recon: torch.Tensor, x: torch.Tensor, moving_weight: float,
                         hard_frac: float = 0.0, hard_weight: float = 0.0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the MSE term the tokenizer trains on, the plain MSE) of (B, T, 3, H, W) frames. In the
    term, pixels that change from the previous frame (bullets, enemies) count ``moving_weight``
    more, and in each frame the ``hard_frac`` share of pixels with the largest error (summed over
    channels; the score digits and small objects a blurry model misses) counts ``hard_weight``
    more; the weights are normalised so that the term stays a weighted mean. With no weights (or a
    single frame for the moving weight) it is the plain MSE."""
    err = (recon.float() - x).pow(2)
    mse = err.mean()
    w = None
    if moving_weight > 0 and x.shape[1] > 1:
        w = torch.ones_like(x[:, :, :1])
        w[:, 1:] += moving_weight * ((x[:, 1:] - x[:, :-1]).abs() > 0.1).any(2, keepdim=True)
    if hard_weight > 0 and hard_frac > 0:
        pix = err.detach().sum(2).flatten(2)  # (B, T, H * W)
        k = max(1, round(hard_frac * pix.shape[-1]))
        kth = pix.topk(k, dim=-1).values[..., -1:]
        hard = (pix >= kth).view(x.shape[0], x.shape[1], 1, *x.shape[-2:])
        w = (torch.ones_like(x[:, :, :1]) if w is None else w) + hard_weight * hard
    if w is None:
        return mse, mse
    return (err * w).mean() / w.mean(), mse


def perceptual_distance(net: nn.Module, recon: torch.Tensor, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Mean perceptual distance of the frames ``idx`` (indices into B * T), images mapped to [-1, 1]."""
    pred = recon.flatten(0, 1)[idx].float().clamp(0, 1) * 2 - 1
    real = x.flatten(0, 1)[idx] * 2 - 1
    return net(pred, real).mean()


class TokenizerLoss(nn.Module):
    """Callable ``(model, batch) -> (loss, logs)``; holds the running RMS statistics."""

    def __init__(self, cfg: TokenizerConfig, lpips_net: nn.Module | None):
        super().__init__()
        self.cfg = cfg
        if cfg.lpips_balance not in ("loss", "grad"):
            raise ConfigValueError(f"tokenizer.lpips_balance must be 'loss' or 'grad', got '{cfg.lpips_balance}'")
        self.lpips = lpips_net
        self.mse_rms = RunningRMS(cfg.rms_decay)
        self.lpips_rms = RunningRMS(cfg.rms_decay)

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        frames = batch["frames"]
        x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames  # (B, T, 3, H, W)
        b, t = x.shape[:2]
        n_patches = (x.shape[-2] // self.cfg.patch) * (x.shape[-1] // self.cfg.patch)
        mask = sample_patch_mask(b, t, n_patches, self.cfg.mask_max, x.device, self.cfg.mask_prob)
        recon, _ = model(x, mask)
        term, mse = reconstruction_error(recon, x, self.cfg.moving_weight, self.cfg.hard_frac, self.cfg.hard_weight)
        loss = self.mse_rms.normalize(term)
        logs = {"tokenizer/train/mse": mse.item(), "tokenizer/train/mask_ratio": mask.float().mean().item()}
        if self.lpips is not None and self.cfg.lpips_weight > 0:
            k = min(self.cfg.lpips_frames, b * t)
            idx = torch.randperm(b * t, device=x.device)[:k]
            lp = perceptual_distance(self.lpips, recon, x, idx)
            if self.cfg.lpips_balance == "grad" and torch.is_grad_enabled() and recon.requires_grad:
                # normalised by its loss value, the perceptual term's gradient is 13-15x the MSE
                # term's and nearly orthogonal to it (README); here its gradient at the
                # reconstruction is scaled to lpips_weight x the MSE term's there instead
                g_mse, g_lp = (torch.autograd.grad(term, recon, retain_graph=True)[0] for term in (loss, lp))
                scale = (g_mse.norm() / g_lp.norm().clamp_min(1e-12)).detach()
                loss = loss + self.cfg.lpips_weight * scale * lp
                logs["tokenizer/train/lpips_scale"] = scale.item()
            else:
                loss = loss + self.cfg.lpips_weight * self.lpips_rms.normalize(lp)
            logs["tokenizer/train/lpips"] = lp.item()
        logs["tokenizer/train/loss"] = loss.item()
        return loss, logs
