"""Shortcut forcing (Dreamer 4 §dynamics; shortcut models, Frans et al. 2024; diffusion
forcing, Chen et al. 2024), term by term:

- Signal level and step size. Per sample, k ~ U{0, ..., log2 Kmax} and d = 1/2^k
  (Kmax = 64, so d_min = 1/64). Per *time step*, tau ~ U{0, d, 2d, ..., 1 - d} (every
  frame its own noise level: diffusion forcing, so the model learns to predict a frame
  from a noisy past).
- Corruption. z~ = (1 - tau) * z0 + tau * z1 with z0 ~ N(0, I), z1 the clean latents
  (tau = 0 pure noise, tau = 1 clean).
- X-prediction. The network outputs z^1 = f(z~, tau, d, actions); its implied velocity is
  v^ = (z^1 - z~) / (1 - tau).
- d = d_min: flow matching loss ||z^1 - z1||^2.
- d > d_min: bootstrap target from two half steps of size d/2 taken by the same network
  with stop-gradient:  b1 = f(z~, tau, d/2) -> v1 = (b1 - z~)/(1 - tau);
  z' = z~ + v1 d/2;  b2 = f(z', tau + d/2, d/2) -> v2 = (b2 - z')/(1 - tau - d/2);
  target v* = (v1 + v2) / 2, loss (1 - tau)^2 ||v^ - v*||^2 (the velocity error scaled back
  to x-space units, so both losses are comparable).
- Weight w(tau) = 0.9 tau + 0.1: frames closer to clean count more.
Sampling with K steps uses d = 1/K from tau = 0 (``wm/models/dynamics.py: rollout``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from wm.models.dynamics import NO_ACTION_INDEX, shift_actions


def sample_shortcut(batch: int, time: int, k_max: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """tau (B, T) on each sample's d-grid, d (B,)."""
    levels = int(math.log2(k_max))
    k = torch.randint(0, levels + 1, (batch,), device=device)
    d = 1.0 / (2.0**k)
    n_steps = (2**k)[:, None].float()  # tau = j * d, j ~ U{0 .. 1/d - 1}
    j = torch.floor(torch.rand(batch, time, device=device) * n_steps)
    return j * d[:, None], d


def bootstrap_velocity(model: nn.Module, z_t: torch.Tensor, tau: torch.Tensor, d: torch.Tensor,
                       prev_actions: torch.Tensor) -> torch.Tensor:
    """v* = mean velocity of two half steps of size d/2 (no gradient)."""
    half = d / 2
    with torch.no_grad():
        b1 = model(z_t, tau, half, prev_actions)
        v1 = (b1 - z_t) / (1 - tau)[..., None, None]
        z_mid = z_t + v1 * half[:, None, None, None]
        tau_mid = tau + half[:, None]
        b2 = model(z_mid, tau_mid, half, prev_actions)
        v2 = (b2 - z_mid) / (1 - tau_mid)[..., None, None]
    return (v1 + v2) / 2


def shortcut_terms(model: nn.Module, z1: torch.Tensor, z0: torch.Tensor, tau: torch.Tensor, d: torch.Tensor,
                   prev_actions: torch.Tensor, d_min: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame squared errors (B, T) before weighting, and the flow/bootstrap masks (B,)."""
    tt = tau[..., None, None]
    z_t = (1 - tt) * z0 + tt * z1
    pred = model(z_t, tau, d, prev_actions)
    is_flow = d <= d_min + 1e-9
    err = torch.zeros(tau.shape, device=z1.device, dtype=torch.float32)
    if is_flow.any():
        f = is_flow
        err[f] = (pred[f].float() - z1[f].float()).pow(2).mean(dim=(-1, -2))
    boot = ~is_flow
    if boot.any():
        b = boot
        v_star = bootstrap_velocity(model, z_t[b], tau[b], d[b], prev_actions[b])
        v_hat = (pred[b] - z_t[b]) / (1 - tau[b])[..., None, None]
        err[b] = ((1 - tau[b]) ** 2) * (v_hat.float() - v_star.float()).pow(2).mean(dim=(-1, -2))
    return err, is_flow, boot


class ShortcutLoss(nn.Module):
    """``(model, batch) -> (loss, logs)`` for batches of latent clips."""

    def __init__(self, k_max: int):
        super().__init__()
        self.k_max = k_max
        self.d_min = 1.0 / k_max

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        z1 = batch["latents"].float()  # (B, T, L, dz)
        b, t = z1.shape[:2]
        prev = shift_actions(batch["actions"])
        if "action_free" in batch:
            prev = torch.where(batch["action_free"][:, None], torch.full_like(prev, NO_ACTION_INDEX), prev)
        tau, d = sample_shortcut(b, t, self.k_max, z1.device)
        z0 = torch.randn_like(z1)
        err, is_flow, boot = shortcut_terms(model, z1, z0, tau, d, prev, self.d_min)
        weight = 0.9 * tau + 0.1
        loss = (weight * err).mean()
        logs = {"dynamics/train/loss": loss.item(), "dynamics/train/clip_len": float(t)}
        if is_flow.any():
            logs["dynamics/train/flow_mse"] = err[is_flow].mean().item()
        if boot.any():
            logs["dynamics/train/bootstrap_mse"] = err[boot].mean().item()
        return loss, logs
