"""Interactive dynamics model (Dreamer 4 §dynamics): predicts clean latents from noisy ones.

Tokens of one time step t, in order (S = 1 + 1 + n_latents / pack, plus the transformer's registers):

    [ action a_{t-1} | shortcut signal (tau_t, d) | n_latents / pack spatial tokens of noisy latents z~_t ]

- Packing (the paper's spatial tokens S_z): ``pack`` consecutive tokenizer latents are
  concatenated into one spatial token (pack * latent_dim values), so the transformer carries
  fewer, wider tokens per frame; the output is unpacked back to (n_latents, latent_dim).

- The action token embeds the action that *led to* frame t (``actions[t-1]`` in the data's
  convention); frame 0 and action-free video use a learned "no action" embedding (index
  ``n_actions``).
- The shortcut signal token is the sum of a learned embedding of the signal level
  tau in {0, 1/Kmax, ..., 1} and one of the step size d = 1/2^k, k in {0..log2 Kmax}.
- Each spatial token is a linear projection of its packed latents (pack * latent_dim -> dim)
  plus a learned per-slot embedding; the output at spatial tokens -> linear -> unpack ->
  x-prediction z^_1.
- With ``prev_input`` (a stated deviation, off in the paper preset) each latent token also
  adds a projection of the *previous* frame's input latent at the same slot (as that frame is
  seen: at its own noise level in training, at the context level when sampling; zeros before
  frame 0). This is a causal "token shift": the last frame, which most of the next one
  repeats, is in the residual stream from the first block on instead of only after the
  first temporal block, so the blocks can spend themselves on what changes.
- The shared transformer is block-causal (temporal attention every ``time_every``-th
  block), uses GQA and registers, and can decode frame by frame with a KV cache.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from wm.config import DynamicsConfig
from wm.errors import ConfigValueError
from wm.models.transformer import KVCache, Transformer

NO_ACTION_INDEX = -1


def tau_index(tau: torch.Tensor, k_max: int) -> torch.Tensor:
    return (tau * k_max).round().long().clamp(0, k_max)


def step_index(d: torch.Tensor) -> torch.Tensor:
    """d = 1/2^k -> k."""
    return (-torch.log2(d)).round().long()


class Dynamics(nn.Module):
    def __init__(self, cfg: DynamicsConfig, n_actions: int, n_latents: int, latent_dim: int):
        super().__init__()
        if cfg.k_max & (cfg.k_max - 1):
            raise ConfigValueError(f"dynamics.k_max must be a power of two, got {cfg.k_max}")
        self.cfg = cfg
        self.n_actions = n_actions
        self.n_latents = n_latents
        self.latent_dim = latent_dim
        if cfg.pack < 1 or n_latents % cfg.pack:
            raise ConfigValueError(f"dynamics.pack={cfg.pack} must divide the tokenizer's n_latents={n_latents}")
        self.n_spatial = n_latents // cfg.pack
        packed = cfg.pack * latent_dim
        dim = cfg.model.dim
        self.action_embed = nn.Embedding(n_actions + 1, dim)  # last row: "no action"
        self.tau_embed = nn.Embedding(cfg.k_max + 1, dim)
        self.step_embed = nn.Embedding(int(math.log2(cfg.k_max)) + 1, dim)
        self.latent_in = nn.Linear(packed, dim)
        self.slot_embed = nn.Parameter(torch.randn(self.n_spatial, dim) * 0.02)
        self.transformer = Transformer(cfg.model)
        self.latent_out = nn.Linear(dim, packed)
        self.prev_in = nn.Linear(packed, dim) if cfg.prev_input else None
        self.n_prefix = 2  # action, shortcut signal

    @property
    def tokens_per_step(self) -> int:
        return self.n_prefix + self.n_spatial

    def pack(self, z: torch.Tensor) -> torch.Tensor:
        """(B, T, n_latents, latent_dim) -> (B, T, n_spatial, pack * latent_dim)."""
        return z.reshape(*z.shape[:2], self.n_spatial, self.cfg.pack * self.latent_dim)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """Transformer output (B, T, S, D) -> x-prediction (B, T, n_latents, latent_dim)."""
        out = self.latent_out(h[:, :, self.n_prefix : self.n_prefix + self.n_spatial])
        return out.reshape(*out.shape[:2], self.n_latents, self.latent_dim)

    def embed_actions(self, prev_actions: torch.Tensor) -> torch.Tensor:
        """prev_actions (B, T) with -1 = none -> (B, T, 1, D)."""
        idx = torch.where(prev_actions < 0, torch.full_like(prev_actions, self.n_actions), prev_actions)
        return self.action_embed(idx)[:, :, None]

    def previous_latents(self, z_noisy: torch.Tensor, cache: KVCache | None, update_cache: bool) -> torch.Tensor:
        """The (packed) input latents one frame back: the cache's last committed frame (or
        zeros) before the first of these frames; committing frames remembers the last one."""
        first = cache.state.get("prev_latents") if cache is not None else None
        if first is None:
            first = torch.zeros_like(z_noisy[:, :1])
        prev = torch.cat([first, z_noisy[:, :-1]], dim=1)
        if cache is not None and update_cache:
            cache.state["prev_latents"] = z_noisy[:, -1:].detach()
        return prev

    def tokens(self, z_noisy: torch.Tensor, tau: torch.Tensor, d: torch.Tensor, prev_actions: torch.Tensor,
               extra: torch.Tensor | None = None, cache: KVCache | None = None,
               update_cache: bool = True) -> torch.Tensor:
        """(B, T, S, D) tokens. z_noisy (B, T, L, dz); tau (B, T); d (B,) or (B, T); prev_actions (B, T).
        ``cache``/``update_cache`` as for the transformer (they carry the previous frame's latents)."""
        b, t = tau.shape
        d = d[:, None].expand(b, t) if d.ndim == 1 else d
        signal = self.tau_embed(tau_index(tau, self.cfg.k_max)) + self.step_embed(step_index(d))
        packed = self.pack(z_noisy)
        latents = self.latent_in(packed) + self.slot_embed
        if self.prev_in is not None:
            latents = latents + self.prev_in(self.previous_latents(packed, cache, update_cache))
        parts = [self.embed_actions(prev_actions), signal[:, :, None], latents]
        if extra is not None:
            parts.append(extra)
        return torch.cat(parts, dim=2)

    def forward(
        self,
        z_noisy: torch.Tensor,
        tau: torch.Tensor,
        d: torch.Tensor,
        prev_actions: torch.Tensor,
        cache: KVCache | None = None,
        update_cache: bool = True,
    ) -> torch.Tensor:
        """x-prediction of the clean latents z^_1 (B, T, L, dz)."""
        tokens = self.tokens(z_noisy, tau, d, prev_actions, cache=cache, update_cache=update_cache)
        h = self.transformer(tokens, cache=cache, update_cache=update_cache)
        return self.readout(h)


def shift_actions(actions: torch.Tensor) -> torch.Tensor:
    """actions[t] (taken after frame t) -> prev_actions[t] = actions[t-1], -1 at t = 0."""
    return torch.cat([torch.full_like(actions[:, :1], NO_ACTION_INDEX), actions[:, :-1]], dim=1)


def context_level(ctx_noise: float, k_max: int) -> float:
    """Signal level tau_ctx = 1 - ctx_noise at which past frames are seen, snapped to the
    tau grid of the finest step (the levels the model was trained on)."""
    return round((1.0 - ctx_noise) * k_max) / k_max
