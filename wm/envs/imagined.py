"""The world model behind the real environment's (vector) API (the diamond habit).

``ImaginedEnv`` is batched like ``gymnasium.vector``: ``reset(seed)`` starts ``num_envs``
imagined episodes from real context clips, ``step(actions)`` generates the next frame of each
with the K-step shortcut sampler and the KV cache, and returns rewards from the agent's frame
reward head (features and the latents of the last two frames). Observations are decoded frames
(N, H, W, 3) uint8, as the real env returns; ``info`` carries the latents, the agent features
(what imagination RL actually uses) and ``continue``, the continuation head's probability that
the step lost no life and did not end the game.
Imagined episodes are not cut by it (imagination RL discounts returns by it instead); they end
by truncation after ``max_steps``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from wm.models.dynamics import shift_actions
from wm.world_model import Caches, WorldModel


class ImaginedEnv:
    def __init__(self, world: WorldModel, contexts: Callable[[int], dict[str, torch.Tensor]], num_envs: int, *,
                 max_steps: int = 16):
        if world.agent is None:
            raise ValueError("an imagined env needs a world model with an agent (features, reward, continuation)")
        self.world = world
        self.agent = world.agent.eval()
        self.contexts = contexts
        self.num_envs = num_envs
        self.max_steps = max_steps
        self.device = world.device
        self.action_space_n = world.n_actions
        self._caches: Caches | None = None
        self._t = 0
        self._gen = torch.Generator(device=self.device)

    def _render(self, z: torch.Tensor) -> np.ndarray:
        if self.world.tokenizer is None:
            return np.zeros((self.num_envs, 0, 0, 3), np.uint8)
        frames = self.world.decode(z, self._caches)[:, -1]
        return (frames.permute(0, 2, 3, 1) * 255).round().byte().cpu().numpy()

    @torch.no_grad()
    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self._gen.manual_seed(0 if seed is None else seed)
        ctx = self.contexts(0 if seed is None else seed)
        z = ctx["latents"].to(self.device).float()[: self.num_envs]
        actions = ctx["actions"].to(self.device)[: self.num_envs]
        prev = shift_actions(actions)
        self._caches = self.world.new_caches()
        feat = self.world.observe(z, prev, self._caches.dynamics, self._gen)
        self._t = 0
        self._z = z[:, -1:]
        obs = self._render(z)
        return obs, {"latents": z[:, -1], "features": feat[:, -1], "frames": obs}

    @torch.no_grad()
    def step(self, actions: np.ndarray | torch.Tensor):
        if self._caches is None:
            raise RuntimeError("call reset() before step()")
        a = torch.as_tensor(actions, device=self.device).long().view(self.num_envs, 1)
        n = self.num_envs
        z = self.world.sample(a, self._caches.dynamics, self._gen)
        feat = self.world.observe(z, a, self._caches.dynamics, self._gen)
        reward = self.world.reward(feat[:, -1], self._z[:, -1], z[:, -1])
        cont = self.world.continuation(feat[:, -1])
        self._t += 1
        self._z = z
        obs = self._render(z)
        terminated = np.zeros(n, bool)
        truncated = np.full(n, self._t >= self.max_steps)
        return obs, reward.cpu().numpy(), terminated, truncated, {"latents": z[:, -1], "features": feat[:, -1],
                                                                  "continue": cont, "frames": obs}


@torch.no_grad()
def imagined_reward_rate(env: ImaginedEnv, act: Callable[[dict[str, Any], int], torch.Tensor],
                         seeds: Iterable[int], kill_prob: Callable[[torch.Tensor], torch.Tensor] | None = None
                         ) -> dict[str, float]:
    """Mean reward per step the world model predicts for a policy ``act(info, t) -> actions``
    (``info["features"]``: the agent features; ``info["frames"]``: the decoded frames)
    over ``len(seeds)`` batches of ``env.num_envs`` imagined episodes of ``env.max_steps`` steps:
    ``{"reward": ...}``. Read beside the same policy's real reward per step: the gap says how
    well imagination, where the policy learns, prices what it does. With ``kill_prob`` (a
    function of the latent pairs (N, 2, L, dz) -- previous frame, this frame -- to P(a kill in
    this transition)), also ``"kills"``: the expected kills per step in the generated frames,
    a figure that does not go through the reward head."""
    total, kills, steps = 0.0, 0.0, 0
    for seed in seeds:
        _, info = env.reset(seed=seed)
        for t in range(env.max_steps):
            z_prev = info["latents"]
            _, reward, _, _, info = env.step(act(info, t))
            total += float(np.sum(reward))
            if kill_prob is not None:
                kills += float(kill_prob(torch.stack([z_prev, info["latents"]], 1)).sum())
            steps += env.num_envs
    if steps == 0:
        raise ValueError("imagined_reward_rate needs at least one seed and one step")
    return {"reward": total / steps, **({"kills": kills / steps} if kill_prob is not None else {})}
