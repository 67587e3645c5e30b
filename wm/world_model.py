"""The world model's one owner: loading, encoding, the context level, the K-step sampler,
decoding, and the heads that price imagined steps.

``WorldModel`` wraps a trained ``Dynamics`` (dynamics evaluation, before any agent exists) or
an ``Agent`` (dynamics + agent tokens + heads), plus the tokenizer when pixels are involved.
Everything that turns frames into latents, shows latents to the transformer as context, or
generates the next latents goes through it, so the dynamics evaluation (``rollout``), the
imagined env, the neural policy in the real game and imagination RL see the world the same way:

- ``encode`` / ``decode``: the causal tokenizer, frame by frame with its KV caches;
- ``observe``: append frames to the transformer's KV cache as *context*, i.e. noised to the
  signal level ``tau_ctx = context_level(ctx_noise)`` at the finest step size, as in training;
  with an agent this returns the agent features of those frames;
- ``sample``: the next frame from pure noise by ``steps`` shortcut steps of size 1/steps
  (x-prediction -> velocity -> Euler), reading the cache without changing it;
- ``reward`` / ``continuation``: the agent's heads on features (and latents, for the reward);
- ``rollout``: context + a sequence of actions -> generated latents, with or without the KV
  cache (the uncached path recomputes the whole history each step: the reference for the
  cache and the bench's yardstick).

Noise is drawn from one generator in a fixed order (context frames, then per generated frame
its initial noise and its context noise), so ``rollout``, the imagined env and a frame-by-frame
caller that makes the same calls get the same numbers (tests/test_world_model.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wm.errors import ConfigValueError
from wm.models.agent import Agent, agent_view
from wm.models.dynamics import Dynamics, context_level
from wm.models.tokenizer import Tokenizer
from wm.models.transformer import KVCache
from wm.objectives.twohot import make_bins, twohot_decode


@dataclass
class Caches:
    """Per-episode state: the transformer's KV cache and the tokenizer's (when pixels are used)."""

    dynamics: KVCache
    encoder: KVCache | None = None
    decoder: KVCache | None = None


class WorldModel:
    def __init__(self, model: Dynamics | Agent, *, ctx_noise: float, steps: int, tokenizer: Tokenizer | None = None,
                 task: int = 0):
        self.agent = model if isinstance(model, Agent) else None
        self.dynamics = model.dynamics if isinstance(model, Agent) else model
        self.k_max = self.dynamics.cfg.k_max
        if steps < 1 or self.k_max % steps:
            raise ConfigValueError(f"sampling steps must divide k_max={self.k_max}, got {steps}")
        self.steps = steps
        self.ctx_noise = ctx_noise
        self.tau_ctx = context_level(ctx_noise, self.k_max)
        self.d_min = 1.0 / self.k_max
        self.tokenizer = tokenizer
        self.task = task
        self.device = next(self.dynamics.parameters()).device
        self.bins = make_bins(self.agent.bins).to(self.device) if self.agent is not None else None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, agent_dir: str | Path, tokenizer_dir: str | Path | None = None, *, steps: int | None = None,
             device: torch.device | str | None = None) -> tuple[WorldModel, dict[str, Any]]:
        """The agent checkpoint in ``agent_dir`` (finetuned or after imagination RL) with the
        context level and sampler steps it was trained with (``steps`` overrides the latter),
        and the tokenizer of ``tokenizer_dir`` if given; eval mode, on ``device``."""
        agent, saved = load_agent(agent_dir)
        device = torch.device(device or "cpu")
        tok = None
        if tokenizer_dir is not None:
            tok, _ = load_tokenizer(tokenizer_dir, device)
        dyn = saved["dynamics"]
        wm = cls(agent.to(device), ctx_noise=dyn["ctx_noise"], steps=steps or dyn["sample_steps"], tokenizer=tok)
        return wm, saved

    @property
    def n_actions(self) -> int:
        return self.dynamics.n_actions

    def new_caches(self) -> Caches:
        tok = self.tokenizer
        return Caches(self.dynamics.transformer.new_cache(), tok.encoder.new_cache() if tok is not None else None,
                      tok.decoder.new_cache() if tok is not None else None)

    # ------------------------------------------------------------------ pixels
    def encode(self, frames: torch.Tensor, caches: Caches | None = None) -> torch.Tensor:
        """(B, T, 3, H, W) in [0, 1] -> latents (B, T, L, dz)."""
        if self.tokenizer is None:
            raise ValueError("this world model was built without a tokenizer")
        return self.tokenizer.encode(frames, cache=caches.encoder if caches is not None else None)

    def decode(self, z: torch.Tensor, caches: Caches | None = None) -> torch.Tensor:
        """(B, T, L, dz) -> frames (B, T, 3, H, W) clamped to [0, 1]."""
        if self.tokenizer is None:
            raise ValueError("this world model was built without a tokenizer")
        return self.tokenizer.decode(z, cache=caches.decoder if caches is not None else None).clamp(0, 1)

    # ------------------------------------------------------------------ the transformer
    def _forward(self, z: torch.Tensor, tau: torch.Tensor, d: torch.Tensor, prev: torch.Tensor,
                 cache: KVCache | None, update_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.agent is None:
            return self.dynamics(z, tau, d, prev, cache=cache, update_cache=update_cache), None
        task = torch.full((z.shape[0],), self.task, dtype=torch.long, device=z.device)
        return self.agent(z, tau, d, prev, task, cache=cache, update_cache=update_cache)

    def context(self, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Clean latents as context: signal level tau_ctx."""
        return agent_view(z, self.ctx_noise, self.k_max, noise)[0]

    def observe(self, z: torch.Tensor, prev_actions: torch.Tensor, cache: KVCache | None,
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor | None:
        """Append clean frames z (B, T, L, dz), each led to by ``prev_actions`` (B, T), to the
        cache as context; the agent features (B, T, D) of those frames (None without an agent)."""
        if noise is None:
            noise = torch.randn(z.shape, device=z.device, generator=generator)
        noisy, tau, d = agent_view(z, self.ctx_noise, self.k_max, noise)
        _, feat = self._forward(noisy, tau, d, prev_actions, cache)
        return feat

    def sample(self, action: torch.Tensor, cache: KVCache | None, generator: torch.Generator | None = None,
               past: tuple[torch.Tensor, torch.Tensor] | None = None, noise: torch.Tensor | None = None
               ) -> torch.Tensor:
        """The next frame's latents (B, 1, L, dz) after ``action`` (B, 1), from pure noise in
        ``steps`` shortcut steps. With a cache the past is read from it (unchanged); without one
        ``past`` = (context latents at tau_ctx (B, P, L, dz), their prev actions (B, P))."""
        b = action.shape[0]
        n_lat, dz = self.dynamics.n_latents, self.dynamics.latent_dim
        z = noise if noise is not None else torch.randn(b, 1, n_lat, dz, device=self.device, generator=generator)
        d = 1.0 / self.steps
        ones = torch.ones(b, 1, device=self.device)
        for s in range(self.steps):
            tau = s * d
            if cache is not None:
                pred, _ = self._forward(z, ones * tau, ones * d, action, cache, update_cache=False)
            else:
                ctx, ctx_prev = past
                n_past = ctx.shape[1]
                taus = torch.cat([torch.full((b, n_past), self.tau_ctx, device=self.device), ones * tau], 1)
                ds = torch.cat([torch.full((b, n_past), self.d_min, device=self.device), ones * d], 1)
                pred, _ = self._forward(torch.cat([ctx, z], 1), taus, ds, torch.cat([ctx_prev, action], 1), None)
                pred = pred[:, -1:]
            z = z + (pred - z) * (d / (1 - tau))  # Euler step along v = (z^1 - z) / (1 - tau)
        return z

    # ------------------------------------------------------------------ heads
    def reward(self, feat: torch.Tensor, z_prev: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Features (..., D) of a frame, latents (..., L, dz) of the frame before it and of it ->
        decoded reward of the transition into that frame (...) (the frame reward head)."""
        return twohot_decode(self.agent.frame_reward_logits(self.agent.frame_input(feat, z_prev, z)), self.bins)

    def continuation(self, feat: torch.Tensor) -> torch.Tensor:
        """(..., D) -> P(the transition into that frame lost no life and did not end the game)."""
        return torch.sigmoid(self.agent.cont_logit(feat))

    # ------------------------------------------------------------------ open loop
    @torch.no_grad()
    def rollout(self, context: torch.Tensor, context_prev_actions: torch.Tensor, future_prev_actions: torch.Tensor,
                use_cache: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Generate ``H`` frames of latents autoregressively: context (B, C, L, dz) clean latents,
        context_prev_actions (B, C), future_prev_actions (B, H) = the action leading to each
        generated frame. Both paths draw the same noise in the same order."""
        b, c = context.shape[:2]
        cache = self.dynamics.transformer.new_cache() if use_cache else None
        noise = torch.randn(context.shape, device=context.device, generator=generator)
        if cache is not None:
            self.observe(context, context_prev_actions, cache, noise=noise)
        past = (self.context(context, noise), context_prev_actions)
        outputs = []
        for i in range(future_prev_actions.shape[1]):
            act = future_prev_actions[:, i : i + 1]
            z = self.sample(act, cache, generator, past=past)
            outputs.append(z)
            noise = torch.randn(z.shape, device=z.device, generator=generator)
            if cache is not None:
                self.observe(z, act, cache, noise=noise)
            else:
                past = (torch.cat([past[0], self.context(z, noise)], 1), torch.cat([past[1], act], 1))
        return torch.cat(outputs, dim=1)


@torch.no_grad()
def rollout(model: Dynamics | Agent, context: torch.Tensor, context_prev_actions: torch.Tensor,
            future_prev_actions: torch.Tensor, steps: int, ctx_noise: float, use_cache: bool = True,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """``WorldModel(model, ctx_noise, steps).rollout(...)`` for a bare model (dynamics evaluation, bench)."""
    return WorldModel(model, ctx_noise=ctx_noise, steps=steps).rollout(
        context, context_prev_actions, future_prev_actions, use_cache=use_cache, generator=generator)


def agent_tokenizer_dir(agent_dir: str | Path, default: str | Path) -> Path:
    """The tokenizer an agent checkpoint goes with: the one a promoted policy carries in
    ``<agent_dir>/tokenizer`` (the tokenizer it was trained with), else ``default``."""
    from wm.training.trainer import CHECKPOINT

    own = Path(agent_dir) / "tokenizer"
    return own if (own / CHECKPOINT).exists() else Path(default)


def load_agent(ckpt_dir: str | Path) -> tuple[Agent, dict[str, Any]]:
    """An Agent (dynamics + agent tokens + heads) from its checkpoint and saved config."""
    from wm.config import DynamicsConfig, from_dict
    from wm.training.checkpoint import CheckpointError, load_checkpoint, load_model_state
    from wm.training.trainer import CHECKPOINT

    path = Path(ckpt_dir) / CHECKPOINT
    ckpt = load_checkpoint(path)
    saved = ckpt.get("config")
    if not saved or "agent" not in saved:
        raise CheckpointError(f"{path} has no saved agent config; run `wm finetune-agent` first")
    dcfg = from_dict(DynamicsConfig, saved["dynamics"], "dynamics")
    dyn = Dynamics(dcfg, len(saved["env"]["action_map"]), saved["tokenizer"]["n_latents"],
                   saved["tokenizer"]["latent_dim"])
    agent = Agent(dyn, n_tasks=1, mtp=saved["agent"]["mtp"], bins=saved["agent"]["bins"])
    load_model_state(agent, ckpt["model"], path)
    return agent.eval(), saved


def load_dynamics(ckpt_dir: str | Path, n_actions: int) -> tuple[Dynamics, dict[str, Any]]:
    """The trained dynamics model, built from the config saved in its checkpoint."""
    from wm.config import DynamicsConfig, from_dict
    from wm.training.checkpoint import CheckpointError, load_checkpoint
    from wm.training.trainer import CHECKPOINT, load_trained

    path = Path(ckpt_dir) / CHECKPOINT
    saved = load_checkpoint(path).get("config")
    if not saved or "dynamics" not in saved:
        raise CheckpointError(f"{path} has no saved dynamics config; retrain it with `wm train-dynamics`")
    dcfg = from_dict(DynamicsConfig, saved["dynamics"], "dynamics")
    model = Dynamics(dcfg, n_actions, saved["tokenizer"]["n_latents"], saved["tokenizer"]["latent_dim"])
    load_trained(model, path)
    return model, saved


def load_tokenizer(ckpt_dir: str | Path, device: torch.device | None = None) -> tuple[Tokenizer, dict[str, Any]]:
    """The trained tokenizer, built from the config saved in its checkpoint (so it always fits)."""
    from wm.config import TokenizerConfig, from_dict
    from wm.training.checkpoint import CheckpointError, load_checkpoint
    from wm.training.trainer import CHECKPOINT, load_trained

    path = Path(ckpt_dir) / CHECKPOINT
    saved = load_checkpoint(path).get("config")
    if not saved or "tokenizer" not in saved:
        raise CheckpointError(f"{path} has no saved tokenizer config; retrain it with `wm train-tokenizer`")
    tcfg = from_dict(TokenizerConfig, saved["tokenizer"], "tokenizer")
    model = Tokenizer(tcfg, saved["env"]["height"], saved["env"]["width"])
    load_trained(model, path)
    model.eval().requires_grad_(False)
    return model.to(device or torch.device("cpu")), saved
