"""Image quality metrics on (N, 3, H, W) tensors in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (N,), peak 1.0; mean over images is the reported figure."""
    mse = (pred.clamp(0, 1) - target).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def _gaussian(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (N,) with a Gaussian window (Wang et al. 2004), per channel then averaged.
    A 7-pixel window suits 64x64 frames (the usual 11 would cover a sixth of the image)."""
    c1, c2 = 0.01**2, 0.03**2
    pred = pred.clamp(0, 1).float()
    target = target.float()
    ch = pred.shape[1]
    g = _gaussian(size, sigma, pred.device)
    kernel = (g[:, None] * g[None, :]).expand(ch, 1, size, size)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=ch)

    mu_x, mu_y = blur(pred), blur(target)
    sxx = blur(pred * pred) - mu_x**2
    syy = blur(target * target) - mu_y**2
    sxy = blur(pred * target) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim_map.flatten(1).mean(1)


def avgpool2_baseline(target: torch.Tensor) -> torch.Tensor:
    """The blurry reference reconstruction: 2x2 average pooling, upsampled back."""
    return F.interpolate(F.avg_pool2d(target, 2), scale_factor=2, mode="nearest")


def moving_mask(prev: torch.Tensor, cur: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """(N, 1, H, W) bool: pixels that change by more than ``threshold`` in any channel between
    two consecutive frames -- bullets, enemies, explosions: what a whole-frame PSNR averages away."""
    return ((cur - prev).abs() > threshold).any(dim=1, keepdim=True)


def masked_sq_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """(sum of squared errors, number of values) over the masked pixels, all channels."""
    m = mask.expand_as(target)
    return (pred.clamp(0, 1) - target).pow(2)[m].sum().item(), int(m.sum().item())


def pooled_psnr(sq_sum: float, count: int) -> float | None:
    """PSNR (peak 1.0) of the mean squared error over all pooled values; None when there are none."""
    if count == 0:
        return None
    return float(-10 * torch.log10(torch.tensor(max(sq_sum / count, 1e-10))))
