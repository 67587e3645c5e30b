"""lambda-returns (Sutton & Barto; as in Dreamer): mix n-step returns geometrically.

R_t = r_t + gamma * c_t * ((1 - lambda) * V_{t+1} + lambda * R_{t+1}),  R_T = V_T,
with c_t = 1 - terminal_t (no bootstrap past the end of an episode). Dreamer 4 uses
gamma = 0.997, lambda = 0.95.
"""

from __future__ import annotations

import torch


def lambda_returns(rewards: torch.Tensor, values: torch.Tensor, continues: torch.Tensor,
                   gamma: float = 0.997, lam: float = 0.95) -> torch.Tensor:
    """rewards, continues (B, T); values (B, T + 1) (the last one bootstraps) -> (B, T)."""
    if values.shape[1] != rewards.shape[1] + 1:
        raise ValueError("values needs one more step than rewards (the bootstrap value)")
    out = torch.empty_like(rewards)
    nxt = values[:, -1]
    for t in reversed(range(rewards.shape[1])):
        nxt = rewards[:, t] + gamma * continues[:, t] * ((1 - lam) * values[:, t + 1] + lam * nxt)
        out[:, t] = nxt
    return out
