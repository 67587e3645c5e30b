"""The one transformer every model family uses (tokenizer, dynamics, agent).

Design (Dreamer 4, Hafner et al. 2025, and the habits it builds on):

- Tokens are laid out as ``(B, T, S, D)``: T time steps, S tokens per frame.
- **Space/time factorization**: most blocks attend within a frame (over S, full attention);
  every ``time_every``-th block attends over time instead, per token position, causally.
  Together they make the attention block-causal: full within a frame, causal across frames,
  so nothing at time t ever sees t+1.
- Pre-RMSNorm blocks, **SwiGLU** MLPs, **RoPE** on queries/keys (over token index in space
  blocks, over absolute frame index in time blocks), **QK-norm** (RMSNorm per head on q and k),
  optional attention-logit **soft-capping** ``c * tanh(logits / c)``, **GQA** (``kv_heads``
  key/value heads shared by groups of query heads).
- ``zero_residual``: every block's attention output and MLP down projection start at zero, so
  the stack starts as the identity and each seed starts from the same function of its input.
- **Register tokens**: ``registers`` learned tokens placed first in every frame, dropped on output.
- **Hidden tokens** (``hidden``, a (S,) bool): tokens no other token may attend to, while
  they attend to everything (the agent tokens: they read the world model, never change it).
- **KV cache** for frame-by-frame decoding: time blocks keep their past keys/values; space
  blocks need none. ``time_window`` > 0 limits temporal attention to the last W frames in
  training and sampling alike, so a sliding cache reproduces full recomputation exactly.

Attention runs through ``scaled_dot_product_attention`` (flash/efficient kernels) unless
soft-capping is on, which SDPA cannot express; then a plain matmul path computes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from wm.config import TransformerConfig
from wm.errors import ConfigValueError


def softcap_logits(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """Smoothly bound logits to (-cap, cap); identity when ``cap <= 0``."""
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


def rope_tables(positions: torch.Tensor, dim_head: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (L, dim_head // 2) for integer ``positions`` (L,)."""
    inv = 1.0 / (base ** (torch.arange(0, dim_head, 2, device=positions.device, dtype=torch.float32) / dim_head))
    angles = positions.float()[:, None] * inv[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) = halves of the head dim; x (..., L, dh)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


def time_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int) -> torch.Tensor:
    """(Lq, Lk) bool, True = may attend: causal, and within ``window`` frames when > 0."""
    diff = q_pos[:, None] - k_pos[None, :]
    allowed = diff >= 0
    if window > 0:
        allowed &= diff < window
    return allowed


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if cfg.dim % cfg.heads or cfg.heads % cfg.kv_heads:
            raise ConfigValueError(f"dim {cfg.dim} / heads {cfg.heads} / kv_heads {cfg.kv_heads} must divide evenly")
        self.heads, self.kv_heads = cfg.heads, cfg.kv_heads
        self.dim_head = cfg.dim // cfg.heads
        if self.dim_head % 2:
            raise ConfigValueError("head dimension must be even for RoPE")
        self.softcap = cfg.softcap
        self.rope_base = cfg.rope_base
        self.q = nn.Linear(cfg.dim, cfg.heads * self.dim_head, bias=False)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.kv_heads * self.dim_head, bias=False)
        self.out = nn.Linear(cfg.heads * self.dim_head, cfg.dim, bias=False)
        self.q_norm = RMSNorm(self.dim_head) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.dim_head) if cfg.qk_norm else nn.Identity()

    def project(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (N, H, L, dh), k and v (N, Hkv, L, dh), with QK-norm and RoPE at ``positions``."""
        n, length, _ = x.shape
        q = self.q(x).view(n, length, self.heads, self.dim_head).transpose(1, 2)
        k, v = self.kv(x).view(n, length, 2, self.kv_heads, self.dim_head).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope_tables(positions, self.dim_head, self.rope_base)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool = False
    ) -> torch.Tensor:
        """Attention output (N, L, D). ``mask``: (Lq, Lk) bool, True = allowed."""
        n, _, length, _ = q.shape
        if self.softcap <= 0:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal and mask is None, enable_gqa=self.heads != self.kv_heads
            )
        else:
            if self.heads != self.kv_heads:
                k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
                v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
            logits = softcap_logits((q @ k.transpose(-2, -1)) / math.sqrt(self.dim_head), self.softcap)
            if causal and mask is None:
                mask = torch.ones(length, k.shape[2], dtype=torch.bool, device=q.device).tril()
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            out = logits.softmax(dim=-1).to(v.dtype) @ v
        return self.out(out.transpose(1, 2).reshape(n, length, -1))


@dataclass
class KVCache:
    """Past keys/values of the time blocks, for frame-by-frame decoding.

    ``keys[i]``/``values[i]``: (B * S, kv_heads, P, dh) for the i-th time block, already
    rotated by RoPE at their absolute frame index; ``pos`` is the next frame's index.
    """

    window: int = 0
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    pos: int = 0
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # model-specific per-frame state

    @property
    def length(self) -> int:
        return next(iter(self.keys.values())).shape[2] if self.keys else 0

    def past(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.keys.get(layer), self.values.get(layer)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        if self.window > 0:  # the next frame attends to W - 1 past frames plus itself
            drop = max(0, k.shape[2] - (self.window - 1))
            k, v = k[:, :, drop:], v[:, :, drop:]
        self.keys[layer], self.values[layer] = k, v


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.window = cfg.time_window
        self.norm1 = RMSNorm(cfg.dim)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.dim)
        self.mlp = SwiGLU(cfg.dim, int(cfg.mlp_ratio * cfg.dim))
        if cfg.zero_residual:  # the residual branches add nothing at first: the block starts as the identity
            nn.init.zeros_(self.attn.out.weight)
            nn.init.zeros_(self.mlp.down.weight)

    def _space(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, s, d = h.shape
        x = h.reshape(b * t, s, d)
        q, k, v = self.attn.project(x, torch.arange(s, device=h.device))
        return self.attn.attend(q, k, v, mask).view(b, t, s, d)

    def _time(self, h: torch.Tensor, index: int, cache: KVCache | None, update: bool) -> torch.Tensor:
        b, t, s, d = h.shape
        x = h.permute(0, 2, 1, 3).reshape(b * s, t, d)  # (B*S, T, D): each token position over time
        start = cache.pos if cache is not None else 0
        q_pos = torch.arange(start, start + t, device=h.device)
        q, k, v = self.attn.project(x, q_pos)
        past_k, past_v = cache.past(index) if cache is not None else (None, None)
        if past_k is not None:
            k_all, v_all = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        else:
            k_all, v_all = k, v
        k_pos = torch.arange(start + t - k_all.shape[2], start + t, device=h.device)
        if past_k is None and self.window <= 0:
            out = self.attn.attend(q, k_all, v_all, None, causal=True)
        else:
            out = self.attn.attend(q, k_all, v_all, time_mask(q_pos, k_pos, self.window))
        if cache is not None and update:
            cache.store(index, k_all, v_all)
        return out.view(b, s, t, d).permute(0, 2, 1, 3)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None, update: bool, index: int
    ) -> torch.Tensor:
        h = self.norm1(x)
        x = x + (self._time(h, index, cache, update) if self.temporal else self._space(h, mask))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Space-time transformer over (B, T, S, D) tokens; see the module docstring."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        every = cfg.time_every
        self.blocks = nn.ModuleList(
            Block(cfg, temporal=every > 0 and (i + 1) % every == 0) for i in range(cfg.depth)
        )
        self.registers = nn.Parameter(torch.randn(cfg.registers, cfg.dim) * 0.02) if cfg.registers else None
        self.norm = RMSNorm(cfg.dim)

    def new_cache(self) -> KVCache:
        return KVCache(window=self.cfg.time_window)

    @staticmethod
    def space_mask(hidden: torch.Tensor) -> torch.Tensor:
        """(S, S) bool from hidden (S,): token i may read j unless j is hidden and i is not."""
        return ~hidden[None, :] | hidden[:, None]

    def forward(
        self,
        x: torch.Tensor,
        hidden: torch.Tensor | None = None,
        cache: KVCache | None = None,
        update_cache: bool = True,
    ) -> torch.Tensor:
        """x (B, T, S, D) -> (B, T, S, D). With ``cache``, x holds the frames after the cached
        ones; ``update_cache=False`` attends to the cache without appending (e.g. the
        intermediate denoising steps of one frame)."""
        b, t, s, d = x.shape
        r = self.cfg.registers
        if self.registers is not None:
            # Registers go first, so tokens appended at the end (agent tokens) shift no one's
            # RoPE position: the other tokens' outputs stay exactly the same.
            x = torch.cat([self.registers.to(x.dtype).expand(b, t, -1, -1), x], dim=2)
            if hidden is not None:
                hidden = torch.cat([hidden.new_zeros(r), hidden])
        mask = self.space_mask(hidden) if hidden is not None and bool(hidden.any()) else None
        for i, block in enumerate(self.blocks):
            x = block(x, mask, cache, update_cache, i)
        if cache is not None and update_cache:
            cache.pos += t
        return self.norm(x[:, :, r:])
