"""LPIPS (Zhang et al. 2018), offline-safe.

The ``lpips`` package ships only its linear calibration layers; the AlexNet backbone comes
from torchvision's weight download, which cannot happen offline. ``load_lpips`` uses the
real pretrained backbone when its file is already in the torch cache; otherwise it warns
once and returns ``None`` (callers drop the LPIPS term and record ``lpips_pretrained:
false``), unless ``allow_random`` asks for a random backbone (tests only: its numbers are
not LPIPS and must never be reported as such).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

_WARNED = False


def alexnet_weights_path() -> Path:
    from torchvision.models import AlexNet_Weights

    name = os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def pretrained_available() -> bool:
    return alexnet_weights_path().exists()


def load_lpips(allow_random: bool = False) -> tuple[torch.nn.Module | None, bool]:
    """(module or None, pretrained?). The module maps two (N, 3, H, W) images in [-1, 1] to (N,)."""
    global _WARNED
    import lpips

    if pretrained_available():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated"
            net = lpips.LPIPS(net="alex", verbose=False)
        return _frozen(net), True
    if not _WARNED:
        warnings.warn(
            f"LPIPS: pretrained AlexNet weights not found at {alexnet_weights_path()} (no download "
            "happens at run time). The LPIPS loss term is disabled and val/lpips is not reported "
            "(lpips_pretrained: false). To enable it, place alexnet-owt-7be5be79.pth there.",
            stacklevel=2,
        )
        _WARNED = True
    if not allow_random:
        return None, False
    net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    return _frozen(net), False


def _frozen(net: torch.nn.Module) -> torch.nn.Module:
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
