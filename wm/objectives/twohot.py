"""Symlog two-hot regression (DreamerV3, Hafner et al. 2023; used by Dreamer 4's reward
and value heads).

Targets y are squashed with symlog(y) = sign(y) ln(1 + |y|) and spread over the two
neighbouring bins of a fixed grid (``bins``, uniform in symlog space from -20 to 20 by
default), weighted by proximity; the head is trained by cross-entropy against that two-hot
vector and decoded as symexp(sum_i p_i b_i). Large and small rewards get the same
gradient scale, and multi-modal targets do not average into nonsense.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


def make_bins(n: int = 255, low: float = -20.0, high: float = 20.0) -> torch.Tensor:
    return torch.linspace(low, high, n)


def twohot_encode(y: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """(...) values -> (..., n_bins) two-hot weights over symlog-space ``bins``."""
    x = symlog(y).clamp(bins[0], bins[-1])
    hi = torch.searchsorted(bins, x.contiguous(), right=True).clamp(1, len(bins) - 1)
    lo = hi - 1
    w_hi = ((x - bins[lo]) / (bins[hi] - bins[lo])).clamp(0, 1)
    out = torch.zeros(*x.shape, len(bins), device=y.device, dtype=torch.float32)
    out.scatter_(-1, lo[..., None], (1 - w_hi)[..., None])
    out.scatter_add_(-1, hi[..., None], w_hi[..., None])
    return out


def twohot_decode(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """(..., n_bins) logits -> (...) values: symexp of the expected bin."""
    return symexp((logits.float().softmax(-1) * bins).sum(-1))


def twohot_loss(logits: torch.Tensor, y: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the two-hot target, per element (...)."""
    return -(twohot_encode(y, bins) * F.log_softmax(logits.float(), dim=-1)).sum(-1)
