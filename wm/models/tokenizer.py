"""Causal MAE tokenizer (Dreamer 4 §tokenizer): frames <-> a few low-dimensional latents.

Design choices:
- Patchify ``patch x patch`` pixels -> linear -> ``dim``, plus a learned position per patch
  (RoPE in the space blocks gives relative order; the learned table gives 2-D layout).
- ``n_latents`` learned latent tokens ride along with each frame's patches through the
  encoder; their outputs -> linear -> **tanh** give the bottleneck ``z`` (B, T, n_latents,
  latent_dim), bounded in (-1, 1), which is what the dynamics model later predicts.
- MAE: hidden patches are replaced by a learned mask token before the encoder; the ratio is
  drawn per frame by the objective (``wm/objectives/mae.py``). Evaluation uses no mask.
- Decoder: learned per-patch query tokens + the projected latents; its patch outputs ->
  linear -> pixels. It never sees the input pixels, only ``z``.
- Both halves are the shared space-time transformer, so encoding and decoding are causal
  over time (frame t depends on frames <= t only) and can stream with a KV cache. The default
  preset's encoder has no time block (``time_every: 0``): it encodes each frame alone, and the
  decoder's time blocks read the earlier frames (README #16: at the same wall on 2 cores this
  learns faster than a 4-block space-time encoder).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from wm.config import TokenizerConfig
from wm.errors import ConfigValueError
from wm.models.transformer import KVCache, Transformer


class Tokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig, height: int, width: int):
        super().__init__()
        if height % cfg.patch or width % cfg.patch:
            raise ConfigValueError(f"frame {height}x{width} is not divisible by patch size {cfg.patch}")
        self.cfg = cfg
        self.height, self.width = height, width
        self.grid = (height // cfg.patch, width // cfg.patch)
        self.n_patches = self.grid[0] * self.grid[1]
        patch_dim = 3 * cfg.patch * cfg.patch
        enc, dec = cfg.encoder, cfg.decoder
        self.patch_in = nn.Linear(patch_dim, enc.dim)
        self.patch_pos = nn.Parameter(torch.randn(self.n_patches, enc.dim) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(enc.dim) * 0.02)
        self.latent_tokens = nn.Parameter(torch.randn(cfg.n_latents, enc.dim) * 0.02)
        self.encoder = Transformer(enc)
        self.to_latent = nn.Linear(enc.dim, cfg.latent_dim)
        self.from_latent = nn.Linear(cfg.latent_dim, dec.dim)
        self.patch_queries = nn.Parameter(torch.randn(self.n_patches, dec.dim) * 0.02)
        self.decoder = Transformer(dec)
        self.patch_out = nn.Linear(dec.dim, patch_dim)
        if cfg.out_init == "zero":  # the first reconstruction is black instead of noise ~19 dB under black's
            nn.init.zeros_(self.patch_out.weight)
            nn.init.zeros_(self.patch_out.bias)
        elif cfg.out_init != "torch":
            raise ConfigValueError(f"tokenizer.out_init must be torch or zero, not {cfg.out_init!r}")

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch
        return rearrange(x, "b t c (h p1) (w p2) -> b t (h w) (c p1 p2)", p1=p, p2=p)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch
        return rearrange(patches, "b t (h w) (c p1 p2) -> b t c (h p1) (w p2)", h=self.grid[0], p1=p, p2=p, c=3)

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """x (B, T, 3, H, W) in [0, 1] -> z (B, T, n_latents, latent_dim) in (-1, 1).
        ``mask`` (B, T, n_patches) bool hides patches (MAE training)."""
        b, t = x.shape[:2]
        tokens = self.patch_in(self.patchify(x))  # (B, T, N, D)
        if mask is not None:
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        tokens = tokens + self.patch_pos
        latents = self.latent_tokens.expand(b, t, -1, -1)
        h = self.encoder(torch.cat([tokens, latents], dim=2), cache=cache)
        return torch.tanh(self.to_latent(h[:, :, self.n_patches :]))

    def decode(self, z: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """z (B, T, n_latents, latent_dim) -> frames (B, T, 3, H, W), roughly [0, 1]."""
        b, t = z.shape[:2]
        queries = self.patch_queries.expand(b, t, -1, -1)
        h = self.decoder(torch.cat([queries, self.from_latent(z)], dim=2), cache=cache)
        return self.unpatchify(self.patch_out(h[:, :, : self.n_patches]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x, mask)
        return self.decode(z), z
