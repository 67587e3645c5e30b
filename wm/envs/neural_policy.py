"""A trained agent acting in the real game, behind the collection ``Policy`` interface.

Each observation is encoded by the causal tokenizer and shown to the agent as context (the
``WorldModel`` owns both, with their KV caches over the episode), exactly as imagination shows
generated frames; the policy head's first MTP offset gives the action, sampled.
``make_policy('agent:<dir>')`` builds one from a checkpoint directory, so collection and
evaluation can use learned policies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wm.world_model import WorldModel, agent_tokenizer_dir


class NeuralPolicy:
    name = "agent"

    def __init__(self, world: WorldModel, greedy: bool = False):
        if world.agent is None or world.tokenizer is None:
            raise ValueError("a neural policy needs a world model with an agent and a tokenizer")
        self.world = world
        self.greedy = greedy
        self._rng = np.random.default_rng(0)
        self.reset(self._rng)

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._caches = self.world.new_caches()
        self._prev = -1
        self._gen = torch.Generator().manual_seed(int(rng.integers(2**31)))

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> int:
        x = torch.from_numpy(np.array(obs, dtype=np.float32)).permute(2, 0, 1)[None, None] / 255.0  # own copy: obs may be read-only
        z = self.world.encode(x, self._caches)
        feat = self.world.observe(z, torch.tensor([[self._prev]]), self._caches.dynamics, self._gen)
        logits = self.world.agent.policy_logits(feat)[0, -1, 0]
        if self.greedy:
            action = int(logits.argmax())
        else:
            action = int(torch.multinomial(logits.softmax(-1), 1, generator=self._gen))
        self._prev = action
        return action


def policy_from_checkpoint(agent_dir: str | Path, tokenizer_dir: str | Path) -> NeuralPolicy:
    torch.set_num_threads(1)  # one process per emulator; threads would only contend
    world, _ = WorldModel.load(agent_dir, agent_tokenizer_dir(agent_dir, tokenizer_dir))
    return NeuralPolicy(world)
