"""Agent tokens and heads on top of the dynamics transformer (Dreamer 4 §agent).

One agent token per time step, ``agent_token + task_embed[task]`` (task = game and state, so
one model can serve several), appended to the frame's tokens as a *hidden* token: it attends
to every token of its frame (and, in time blocks, to its own past), while no other token
attends to it, so adding agent tokens leaves the dynamics' predictions exactly unchanged.
Heads read the agent token's output:
- policy: logits over the action map for the next ``mtp`` actions (multi-token prediction);
- reward: two-hot logits (real-space bins, ``wm.objectives.twohot``) for the next ``mtp`` rewards
  (a training signal for the agent token during finetuning);
- frame reward: two-hot logits of the reward of the transition into this frame, read from the
  agent token *and* the latents of this frame and the one before (as DreamerV3's reward head reads
  the model state (h, z)). This is the head that prices imagined steps. A kill shows as an
  explosion in the frame's latents: a probe on (z_{t-1}, z_t) ranks held-out kills at ROC-AUC
  0.95 where the agent token alone reaches 0.88-0.89 (README). Its inputs are standardised with
  statistics of the rows it is fitted on (buffers, saved with the model);
- continuation: one logit, the probability that the transition into this frame neither lost a
  life nor ended the game (imagination weights returns by it);
- value: two-hot logits of the return (trained in imagination).
The output layers of the reward, continuation and value heads start at zero (DreamerV3): the
reward and value decode to exactly 0 and continuation to 1/2 before training, instead of to
whatever a random projection over 255 bins happens to give.
"""

from __future__ import annotations

import torch
from torch import nn

from wm.models.dynamics import Dynamics, context_level
from wm.models.transformer import KVCache


def _mlp(dim: int, out: int, zero_out: bool = False, hidden: int | None = None) -> nn.Sequential:
    hidden = hidden or dim
    net = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, out))
    if zero_out:
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
    return net


class Agent(nn.Module):
    def __init__(self, dynamics: Dynamics, n_tasks: int, mtp: int, bins: int):
        super().__init__()
        dim = dynamics.cfg.model.dim
        self.dynamics = dynamics
        self.mtp = mtp
        self.n_actions = dynamics.n_actions
        self.bins = bins
        self.agent_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.task_embed = nn.Embedding(n_tasks, dim)
        self.policy_head = _mlp(dim, mtp * self.n_actions)
        self.reward_head = _mlp(dim, mtp * bins, zero_out=True)
        self.cont_head = _mlp(dim, 1, zero_out=True)
        self.value_head = _mlp(dim, bins, zero_out=True)
        frame_in = dim + 2 * dynamics.n_latents * dynamics.latent_dim
        self.frame_reward_head = _mlp(frame_in, bins, zero_out=True, hidden=dim)
        self.register_buffer("frame_in_mean", torch.zeros(frame_in))
        self.register_buffer("frame_in_std", torch.ones(frame_in))

    def forward(
        self,
        z_noisy: torch.Tensor,
        tau: torch.Tensor,
        d: torch.Tensor,
        prev_actions: torch.Tensor,
        task: torch.Tensor | None = None,
        cache: KVCache | None = None,
        update_cache: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """-> (x-prediction (B, T, L, dz), agent features (B, T, D)); with ``task=None`` the
        dynamics alone (no agent tokens), so objectives written for the dynamics model run
        through this module (and through its DDP wrapper, which only hooks ``forward``)."""
        dyn = self.dynamics
        if task is None:
            return dyn(z_noisy, tau, d, prev_actions, cache=cache, update_cache=update_cache)
        b, t = tau.shape
        agent = (self.agent_token + self.task_embed(task))[:, None, None, :].expand(b, t, 1, -1)
        tokens = dyn.tokens(z_noisy, tau, d, prev_actions, extra=agent, cache=cache, update_cache=update_cache)
        hidden = torch.zeros(tokens.shape[2], dtype=torch.bool, device=tokens.device)
        hidden[-1] = True
        h = dyn.transformer(tokens, hidden=hidden, cache=cache, update_cache=update_cache)
        pred = dyn.readout(h)
        return pred, h[:, :, -1]

    def policy_logits(self, feat: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, mtp, n_actions); offset 0 is the action to take now."""
        return self.policy_head(feat).unflatten(-1, (self.mtp, self.n_actions))

    def reward_logits(self, feat: torch.Tensor) -> torch.Tensor:
        return self.reward_head(feat).unflatten(-1, (self.mtp, self.bins))

    def frame_input(self, feat: torch.Tensor, z_prev: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The frame reward head's input: features (..., D), latents of the previous frame and
        of this one (..., L, dz) each -> (..., D + 2 L dz), unstandardised."""
        return torch.cat([feat, z_prev.flatten(-2), z.flatten(-2)], -1)

    def frame_reward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D + 2 L dz) from ``frame_input`` -> two-hot logits (..., bins)."""
        return self.frame_reward_head((x - self.frame_in_mean) / self.frame_in_std)

    def cont_logit(self, feat: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T): logit of P(the transition into this frame continued the episode)."""
        return self.cont_head(feat).squeeze(-1)

    def value_logits(self, feat: torch.Tensor) -> torch.Tensor:
        return self.value_head(feat)


def agent_view(z: torch.Tensor, ctx_noise: float, k_max: int, noise: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents as the agent sees them in imagination: signal level 1 - ctx_noise, finest step.
    ``noise`` defaults to a fresh standard normal draw. -> (noisy latents, tau (B, T), d (B,))."""
    b, t = z.shape[:2]
    tau_c = context_level(ctx_noise, k_max)
    noisy = (1 - tau_c) * (torch.randn_like(z) if noise is None else noise) + tau_c * z
    return noisy, torch.full((b, t), tau_c, device=z.device), torch.full((b,), 1.0 / k_max, device=z.device)
