"""Multi-token prediction targets (Dreamer 4 §agent finetuning; paper: L = 8).

The agent token at time t has seen frame t and the action a_{t-1} that led to it, not a_t.
So it predicts the next L actions a_t .. a_{t+L-1}, and the rewards r_{t-1} .. r_{t+L-2}:
offset 0 is the reward of the transition it just observed (well posed: action and outcome
are both in view), later offsets are rewards to come under the behaviour policy. In
imagination this gives each generated step's reward from the agent token of the new frame.
Offsets that run past the end of the clip (or before its start) are masked out."""

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


def reward_targets(rewards: torch.Tensor, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards[t] (caused by actions[t]) -> targets[:, t, l] = rewards[t - 1 + l], valid where
    0 <= t - 1 + l < T."""
    b, t = rewards.shape
    padded = torch.cat([torch.zeros_like(rewards[:, :1]), rewards,
                        torch.zeros(b, horizon, dtype=rewards.dtype, device=rewards.device)], dim=1)
    targets = padded.unfold(1, horizon, 1)[:, :t]  # targets[:, t, l] = padded[t + l] = rewards[t + l - 1]
    index = torch.arange(t, device=rewards.device)[:, None] + torch.arange(horizon, device=rewards.device) - 1
    valid = (index >= 0) & (index < t)
    return targets, valid[None].expand(b, -1, -1)
