"""Multi-token prediction targets (Dreamer 4 §agent finetuning): the agent token at time t
predicts the next L actions a_t .. a_{t+L-1} and rewards r_t .. r_{t+L-1} (paper: L = 8).
Offsets that run past the end of the clip are masked out."""

from __future__ import annotations

import torch


def mtp_targets(x: torch.Tensor, horizon: int, fill: float | int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, T) -> targets (B, T, L) with targets[:, t, l] = x[:, t + l], and a validity mask."""
    b, t = x.shape
    pad = torch.full((b, horizon - 1), fill, dtype=x.dtype, device=x.device)
    padded = torch.cat([x, pad], dim=1)
    targets = padded.unfold(1, horizon, 1)  # (B, T, L)
    offsets = torch.arange(horizon, device=x.device)
    valid = (torch.arange(t, device=x.device)[:, None] + offsets[None, :]) < t  # (T, L)
    return targets, valid[None].expand(b, -1, -1)
