"""A trained agent acting in the real game, behind the collection ``Policy`` interface.

Each observation is encoded by the causal tokenizer (KV cache over the episode) and shown to
the agent at the context noise level it was trained with (as in imagination); the policy
head's first MTP offset gives the action, sampled. ``make_policy('agent:<dir>')`` builds one
from a checkpoint directory, so collection and evaluation can use learned policies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from wm.models.agent import Agent
from wm.models.dynamics import context_level
from wm.models.tokenizer import Tokenizer


def load_agent(ckpt_dir: str | Path) -> tuple[Agent, dict[str, Any]]:
    """An Agent (dynamics + agent tokens + heads) from its checkpoint and saved config."""
    from wm.config import DynamicsConfig, from_dict
    from wm.models.dynamics import Dynamics
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


class NeuralPolicy:
    name = "agent"

    def __init__(self, agent: Agent, tokenizer: Tokenizer, ctx_noise: float, greedy: bool = False):
        self.agent = agent.eval()
        self.tokenizer = tokenizer.eval()
        self.ctx_noise = ctx_noise
        self.greedy = greedy
        k_max = agent.dynamics.cfg.k_max
        self.tau = context_level(ctx_noise, k_max)
        self.d = 1.0 / k_max
        self._rng = np.random.default_rng(0)
        self.reset(self._rng)

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._enc_cache = self.tokenizer.encoder.new_cache()
        self._cache = self.agent.dynamics.transformer.new_cache()
        self._prev = -1
        self._gen = torch.Generator().manual_seed(int(rng.integers(2**31)))

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> int:
        x = torch.from_numpy(np.array(obs, dtype=np.float32)).permute(2, 0, 1)[None, None] / 255.0  # own copy: obs may be read-only
        z = self.tokenizer.encode(x, cache=self._enc_cache)
        noisy = (1 - self.tau) * torch.randn(z.shape, generator=self._gen) + self.tau * z
        _, feat = self.agent(noisy, torch.full((1, 1), self.tau), torch.full((1,), self.d),
                             torch.tensor([[self._prev]]), torch.zeros(1, dtype=torch.long), cache=self._cache)
        logits = self.agent.policy_logits(feat)[0, -1, 0]
        if self.greedy:
            action = int(logits.argmax())
        else:
            action = int(torch.multinomial(logits.softmax(-1), 1, generator=self._gen))
        self._prev = action
        return action


def policy_from_checkpoint(agent_dir: str | Path, tokenizer_dir: str | Path) -> NeuralPolicy:
    from wm.stages.cache_latents import load_tokenizer

    torch.set_num_threads(1)  # one process per emulator; threads would only contend
    own = Path(agent_dir) / "tokenizer"  # a promoted policy carries the tokenizer it was trained with
    if (own / "checkpoint.pt").exists():
        tokenizer_dir = own
    agent, saved = load_agent(agent_dir)
    tok, _ = load_tokenizer(tokenizer_dir)
    return NeuralPolicy(agent, tok, saved["dynamics"]["ctx_noise"])
