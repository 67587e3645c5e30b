"""Shortcut forcing (Dreamer 4 §dynamics; shortcut models, Frans et al. 2024; diffusion
forcing, Chen et al. 2024), term by term:

- Signal level and step size. Per sample, k ~ U{0, ..., log2 Kmax} and d = 1/2^k
  (Kmax = 64, so d_min = 1/64). Per *time step*, tau ~ U{0, d, 2d, ..., 1 - d} (every
  frame its own noise level: diffusion forcing, so the model learns to predict a frame
  from a noisy past).
- Context frames (``context_frac``, a stated deviation, 0 = the paper): a share of the frames
  is instead drawn at the sampler's context level tau_ctx = 1 - ctx_noise with d = d_min, so
  the case the sampler actually meets (a nearly clean past, a noisy present) is seen often
  rather than in the ~1/64 of frames uniform tau gives it. These frames get the flow loss.
  d is therefore carried per frame, shape (B, T).
- Forcing rows (``forcing_frac``, a stated deviation, 0 = the paper): that share of the batch's
  clips (of length > 1) is drawn as next-frame prediction exactly as the sampler's first step
  meets it: a target at pure noise (tau = 0) always right after a context frame (tau_ctx), all
  at d = d_min (frame 0 context; a frame after context is a target with probability 1/2);
  targets take the flow loss at weight 1, context frames weight 0. The paper's ramp gives tau = 0 weight 0.1 and uniform levels reach "clean past,
  pure-noise present" rarely, so on a small compute budget the model settles on copying the
  last frame and ignores the actions; these rows teach the conditional next frame directly,
  and the bootstrap chain carries it to the coarse steps the K = 4 sampler takes.
- Corruption. z~ = (1 - tau) * z0 + tau * z1 with z0 ~ N(0, I), z1 the clean latents
  (tau = 0 pure noise, tau = 1 clean).
- X-prediction. The network outputs z^1 = f(z~, tau, d, actions); its implied velocity is
  v^ = (z^1 - z~) / (1 - tau).
- d = d_min: flow matching loss ||z^1 - z1||^2.
- d > d_min: bootstrap target from two half steps of size d/2 taken by the same network
  with stop-gradient:  b1 = f(z~, tau, d/2) -> v1 = (b1 - z~)/(1 - tau);
  z' = z~ + v1 d/2;  b2 = f(z', tau + d/2, d/2) -> v2 = (b2 - z')/(1 - tau - d/2);
  target v* = (v1 + v2) / 2, loss (1 - tau)^2 ||v^ - v*||^2 (the velocity error scaled back
  to x-space units, so both losses are comparable). Frames with d = d_min stay as they are
  during the two half steps (they are the past the bootstrapped frames are conditioned on).
- Weight w(tau) = 0.9 tau + 0.1: frames closer to clean count more (forcing rows: see above).
Sampling with K steps uses d = 1/K from tau = 0 (``wm/models/dynamics.py: rollout``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from wm.config import DynamicsConfig
from wm.models.dynamics import NO_ACTION_INDEX, context_level, shift_actions


def sample_shortcut(batch: int, time: int, k_max: int, device: torch.device, context_frac: float = 0.0,
                    tau_ctx: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """tau (B, T) on each frame's d-grid and d (B, T): d per sample, except the
    ``context_frac`` share of frames drawn at (tau_ctx, d_min)."""
    levels = int(math.log2(k_max))
    k = torch.randint(0, levels + 1, (batch,), device=device)
    d = (1.0 / (2.0**k))[:, None].expand(batch, time).clone()
    n_steps = (2**k)[:, None].float()  # tau = j * d, j ~ U{0 .. 1/d - 1}
    tau = torch.floor(torch.rand(batch, time, device=device) * n_steps) * d
    if context_frac > 0:
        ctx = torch.rand(batch, time, device=device) < context_frac
        tau = torch.where(ctx, torch.full_like(tau, tau_ctx), tau)
        d = torch.where(ctx, torch.full_like(d, 1.0 / k_max), d)
    return tau, d


def forcing_rows(tau: torch.Tensor, d: torch.Tensor, frac: float, tau_ctx: float,
                 k_max: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Redraw a ``frac`` share of the rows as next-frame prediction, d = d_min: frame 0 is
    context (tau_ctx); each later frame is a target (tau = 0) with probability 1/2 if the frame
    before it is context, else context -- so every target has a clean previous frame (what the
    ``prev_input`` token shift and the time attention see when sampling), about 1/3 of frames.
    Returns tau, d and the loss weight (B, T): targets 1, context frames 0, other rows the ramp
    0.9 tau + 0.1."""
    b, t = tau.shape
    weight = 0.9 * tau + 0.1
    if frac <= 0 or t < 2:
        return tau, d, weight
    rows = (torch.rand(b, device=tau.device) < frac)[:, None]
    # a target always follows a context frame, as the sampler meets it (clean past, noise now);
    # frame 0 has no past and stays context
    draw = torch.rand(b, t, device=tau.device) < 0.5
    target = torch.zeros_like(draw)
    for i in range(1, t):
        target[:, i] = draw[:, i] & ~target[:, i - 1]
    tau = torch.where(rows, torch.where(target, torch.zeros_like(tau), torch.full_like(tau, tau_ctx)), tau)
    d = torch.where(rows, torch.full_like(d, 1.0 / k_max), d)
    weight = torch.where(rows, target.to(weight.dtype), weight)
    return tau, d, weight


def bootstrap_velocity(model: nn.Module, z_t: torch.Tensor, tau: torch.Tensor, d: torch.Tensor,
                       prev_actions: torch.Tensor, boot: torch.Tensor | None = None) -> torch.Tensor:
    """v* = mean velocity of two half steps of size d/2 (no gradient) at the ``boot`` frames
    (B, T; default all); the other frames keep their input, level and step size."""
    d = d[:, None].expand_as(tau) if d.ndim == 1 else d
    boot = torch.ones_like(tau, dtype=torch.bool) if boot is None else boot
    half = torch.where(boot, d / 2, d)
    step = torch.where(boot, d / 2, torch.zeros_like(d))
    with torch.no_grad():
        b1 = model(z_t, tau, half, prev_actions)
        v1 = (b1 - z_t) / (1 - tau)[..., None, None]
        z_mid = z_t + v1 * step[..., None, None]
        tau_mid = tau + step
        b2 = model(z_mid, tau_mid, half, prev_actions)
        v2 = (b2 - z_mid) / (1 - tau_mid)[..., None, None]
    return (v1 + v2) / 2


def shortcut_terms(model: nn.Module, z1: torch.Tensor, z0: torch.Tensor, tau: torch.Tensor, d: torch.Tensor,
                   prev_actions: torch.Tensor, d_min: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame squared errors (B, T) before weighting, and the flow/bootstrap masks (B, T).
    d is (B,) (one step size per sample) or (B, T)."""
    d = d[:, None].expand_as(tau) if d.ndim == 1 else d
    tt = tau[..., None, None]
    z_t = (1 - tt) * z0 + tt * z1
    pred = model(z_t, tau, d, prev_actions)
    is_flow = d <= d_min + 1e-9
    boot = ~is_flow
    err = (pred.float() - z1.float()).pow(2).mean(dim=(-1, -2))
    rows = boot.any(dim=1)  # samples with at least one bootstrapped frame
    if rows.any():
        r = rows
        v_star = bootstrap_velocity(model, z_t[r], tau[r], d[r], prev_actions[r], boot[r])
        v_hat = (pred[r] - z_t[r]) / (1 - tau[r])[..., None, None]
        boot_err = ((1 - tau[r]) ** 2) * (v_hat.float() - v_star.float()).pow(2).mean(dim=(-1, -2))
        err[r] = torch.where(boot[r], boot_err, err[r])
    return err, is_flow, boot


def event_frames(batch: dict[str, torch.Tensor], span: int = 3) -> torch.Tensor:
    """(B, T) bool: frame t shows the first ``span`` frames after a kill (reward > 0) or a lost
    life (continuation < 1) in the transition into one of frames t - span + 1 .. t. ``rewards[t]``
    and ``continues[t]`` belong to the transition after frame t (into t + 1)."""
    event = batch["rewards"].float() > 0
    if "continues" in batch:
        event = event | (batch["continues"].float() < 1)
    into = torch.cat([torch.zeros_like(event[:, :1]), event[:, :-1]], 1)  # the transition into frame t
    out = into.clone()
    for k in range(1, span):
        out[:, k:] |= into[:, :-k]
    return out


class ShortcutLoss(nn.Module):
    """``(model, batch) -> (loss, logs)`` for batches of latent clips."""

    def __init__(self, k_max: int, context_frac: float = 0.0, ctx_noise: float = 0.1, forcing_frac: float = 0.0,
                 event_weight: float = 0.0):
        super().__init__()
        self.event_weight = event_weight
        self.k_max = k_max
        self.d_min = 1.0 / k_max
        self.context_frac = context_frac
        self.forcing_frac = forcing_frac
        self.tau_ctx = context_level(ctx_noise, k_max)

    @classmethod
    def from_config(cls, dyn: DynamicsConfig) -> ShortcutLoss:
        return cls(dyn.k_max, dyn.context_frac, dyn.ctx_noise, dyn.forcing_frac, dyn.event_weight)

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        z1 = batch["latents"].float()  # (B, T, L, dz)
        b, t = z1.shape[:2]
        prev = shift_actions(batch["actions"])
        if "action_free" in batch:
            prev = torch.where(batch["action_free"][:, None], torch.full_like(prev, NO_ACTION_INDEX), prev)
        # a single frame has no past to be context for: it always gets a level of its own
        frac = self.context_frac if t > 1 else 0.0
        tau, d = sample_shortcut(b, t, self.k_max, z1.device, frac, self.tau_ctx)
        tau, d, weight = forcing_rows(tau, d, self.forcing_frac, self.tau_ctx, self.k_max)
        z0 = torch.randn_like(z1)
        err, is_flow, boot = shortcut_terms(model, z1, z0, tau, d, prev, self.d_min)
        if self.event_weight > 0 and "rewards" in batch:
            weight = weight * (1 + self.event_weight * event_frames(batch).to(weight.dtype))
        loss = (weight * err).mean()
        logs = {"dynamics/train/loss": loss.item(), "dynamics/train/clip_len": float(t)}
        if is_flow.any():
            logs["dynamics/train/flow_mse"] = err[is_flow].mean().item()
        if boot.any():
            logs["dynamics/train/bootstrap_mse"] = err[boot].mean().item()
        return loss, logs
