"""The world model behind the real environment's (vector) API (the diamond habit).

``ImaginedEnv`` is batched like ``gymnasium.vector``: ``reset(seed)`` starts ``num_envs``
imagined episodes from real context clips, ``step(actions)`` generates the next frame of each
with the K-step shortcut sampler and the KV cache, and returns rewards from the agent's reward
head. Observations are decoded frames (N, H, W, 3) uint8, as the real env returns; ``info``
carries the latents, the agent features (what imagination RL actually uses) and ``continue``,
the continuation head's probability that the step lost no life and did not end the game.
Imagined episodes are not cut by it (imagination RL discounts returns by it instead); they end
by truncation after ``max_steps``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from wm.models.agent import Agent
from wm.models.dynamics import context_level
from wm.models.tokenizer import Tokenizer
from wm.models.transformer import KVCache
from wm.objectives.twohot import make_bins, twohot_decode


class ImaginedEnv:
    def __init__(
        self,
        agent: Agent,
        contexts: Callable[[int], dict[str, torch.Tensor]],
        num_envs: int,
        *,
        steps: int = 4,
        ctx_noise: float = 0.1,
        max_steps: int = 16,
        tokenizer: Tokenizer | None = None,
        bins: int = 255,
        task: int = 0,
    ):
        self.agent = agent.eval()
        self.contexts = contexts
        self.num_envs = num_envs
        self.steps = steps
        self.ctx_noise = ctx_noise
        self.max_steps = max_steps
        self.tokenizer = tokenizer
        self.device = next(agent.parameters()).device
        self.bins = make_bins(bins).to(self.device)
        self.task = torch.full((num_envs,), task, dtype=torch.long, device=self.device)
        k_max = agent.dynamics.cfg.k_max
        self.k_max = k_max
        self.tau_ctx = context_level(ctx_noise, k_max)
        self.action_space_n = agent.n_actions
        self._cache: KVCache | None = None
        self._dec_cache: KVCache | None = None
        self._t = 0
        self._gen = torch.Generator(device=self.device)

    def _noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(*shape, device=self.device, generator=self._gen)

    def _observe(self, z: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Append frames z (N, T, L, dz) at context noise to the cache; agent features (N, T, D)."""
        n, t = z.shape[:2]
        noisy = (1 - self.tau_ctx) * self._noise(tuple(z.shape)) + self.tau_ctx * z
        tau = torch.full((n, t), self.tau_ctx, device=self.device)
        d = torch.full((n,), 1.0 / self.k_max, device=self.device)
        _, feat = self.agent(noisy, tau, d, prev, self.task, cache=self._cache)
        return feat

    def _render(self, z: torch.Tensor) -> np.ndarray:
        if self.tokenizer is None:
            return np.zeros((self.num_envs, 0, 0, 3), np.uint8)
        frames = self.tokenizer.decode(z, cache=self._dec_cache)[:, -1].clamp(0, 1)
        return (frames.permute(0, 2, 3, 1) * 255).round().byte().cpu().numpy()

    @torch.no_grad()
    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self._gen.manual_seed(0 if seed is None else seed)
        ctx = self.contexts(0 if seed is None else seed)
        z = ctx["latents"].to(self.device).float()[: self.num_envs]
        actions = ctx["actions"].to(self.device)[: self.num_envs]
        prev = torch.cat([torch.full_like(actions[:, :1], -1), actions[:, :-1]], dim=1)
        self._cache = self.agent.dynamics.transformer.new_cache()
        self._dec_cache = self.tokenizer.decoder.new_cache() if self.tokenizer is not None else None
        feat = self._observe(z, prev)
        self._t = 0
        self._z = z[:, -1:]
        obs = self._render(z)
        return obs, {"latents": z[:, -1], "features": feat[:, -1]}

    @torch.no_grad()
    def step(self, actions: np.ndarray | torch.Tensor):
        if self._cache is None:
            raise RuntimeError("call reset() before step()")
        a = torch.as_tensor(actions, device=self.device).long().view(self.num_envs, 1)
        n = self.num_envs
        z = self._noise((n, 1, *self._z.shape[2:]))
        d = 1.0 / self.steps
        ones = torch.ones(n, 1, device=self.device)
        for s in range(self.steps):
            tau = s * d
            pred, _ = self.agent(z, ones * tau, torch.full((n,), d, device=self.device), a, self.task,
                                 cache=self._cache, update_cache=False)
            z = z + (pred - z) * (d / (1 - tau))
        feat = self._observe(z, a)
        reward = twohot_decode(self.agent.reward_logits(feat)[:, -1, 0], self.bins)
        cont = torch.sigmoid(self.agent.cont_logit(feat)[:, -1])
        self._t += 1
        self._z = z
        obs = self._render(z)
        terminated = np.zeros(n, bool)
        truncated = np.full(n, self._t >= self.max_steps)
        return obs, reward.cpu().numpy(), terminated, truncated, {"latents": z[:, -1], "features": feat[:, -1],
                                                                  "continue": cont}


@torch.no_grad()
def imagined_reward_rate(env: ImaginedEnv, act: Callable[[torch.Tensor, int], torch.Tensor],
                         seeds: Iterable[int]) -> float:
    """Mean reward per step the world model predicts for a policy ``act(features, t) -> actions``
    over ``len(seeds)`` batches of ``env.num_envs`` imagined episodes of ``env.max_steps`` steps.
    Read beside the same policy's real reward per step: the gap says how well imagination, where
    the policy learns, prices what it does."""
    total, steps = 0.0, 0
    for seed in seeds:
        _, info = env.reset(seed=seed)
        for t in range(env.max_steps):
            _, reward, _, _, info = env.step(act(info["features"], t))
            total += float(np.sum(reward))
            steps += env.num_envs
    if steps == 0:
        raise ValueError("imagined_reward_rate needs at least one seed and one step")
    return total / steps
