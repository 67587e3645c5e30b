"""One PMPO update from a batch of imagined trajectories (Dreamer 4 §imagination RL).

``PMPOLearner.update(feat, actions, rewards, continues)`` owns everything between a rollout
and an optimizer step, so imagination RL and its tests run the same code:

- lambda-returns from the decoded rewards and the value head, discounted by the predicted
  continuation (a lost life ends the return);
- the value head regresses those returns (two-hot), every iteration, starting from a
  zero-initialised output (value 0) and with ``value_warmup`` value-only iterations first,
  so the first policy step sees advantages against a baseline that has already moved;
- advantages R_t - V(s_t), centred per imagined step over the batch (``center``: mean or
  median): the value is still learning and a shared bias would put every sample on one side of
  zero, leaving PMPO's sign split empty on one side (the committed run before this had 98-100 %
  positive). With sparse rewards the mean sits above most samples (a few kills pull it up), so
  mean-centring left 23 % positive on average once the reward head was calibrated; the median
  splits each step's batch in half, which is what PMPO's sign split uses;
- guard rails: the policy step is skipped when the positive share leaves
  [``guard_low``, ``guard_high``]; every update logs that share (``rl/pos_adv_frac``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from wm.config import RLConfig
from wm.errors import ConfigValueError
from wm.objectives.pmpo import pmpo_loss
from wm.objectives.returns import lambda_returns
from wm.objectives.twohot import twohot_decode, twohot_loss

Head = Callable[[torch.Tensor], torch.Tensor]


class PMPOLearner:
    def __init__(self, policy: Head, value: Head, prior: Head, params: Iterable[nn.Parameter], cfg: RLConfig,
                 bins: torch.Tensor):
        self.policy, self.value, self.prior = policy, value, prior
        if cfg.center not in ("none", "mean", "median"):
            raise ConfigValueError(f"rl.center must be none, mean or median, got '{cfg.center}'")
        self.params = list(params)
        self.cfg = cfg
        self.bins = bins
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        self.iteration = 0

    def advantages(self, feat: torch.Tensor, rewards: torch.Tensor, continues: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """feat (N, H + 1, D), rewards/continues (N, H) -> (returns, values (N, H + 1), advantages)."""
        r = self.cfg
        with torch.no_grad():
            values = twohot_decode(self.value(feat), self.bins)
            returns = lambda_returns(rewards, values, continues, r.gamma, r.lam)
            adv = returns - values[:, :-1]
            if r.center == "mean":
                adv = adv - adv.mean(dim=0, keepdim=True)
            elif r.center == "median":
                adv = adv - adv.median(dim=0, keepdim=True).values
        return returns, values, adv

    def update(self, feat: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
               continues: torch.Tensor) -> dict[str, float]:
        """One optimizer step; returns the logs (``rl/policy_step`` 1 when the policy moved)."""
        r = self.cfg
        returns, values, adv = self.advantages(feat, rewards, continues)
        pos_frac = (adv > 0).float().mean().item()
        value_loss = twohot_loss(self.value(feat[:, :-1]), returns, self.bins).mean()
        step_policy = self.iteration >= r.value_warmup and r.guard_low <= pos_frac <= r.guard_high
        logits = self.policy(feat[:, :-1])
        with torch.no_grad():
            prior = self.prior(feat[:, :-1])
        policy_loss, plogs = pmpo_loss(logits, actions, adv, prior, alpha=r.alpha, beta=r.beta)
        # a skipped policy step leaves the policy's gradients None, so AdamW leaves those
        # parameters (and their moment estimates) alone; a zero gradient would still move them
        loss = value_loss + policy_loss if step_policy else value_loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, r.grad_clip)
        self.opt.step()
        self.iteration += 1
        return {"rl/imagined_return": rewards.sum(1).mean().item(), "rl/policy_loss": policy_loss.item(),
                "rl/value_loss": value_loss.item(), "rl/entropy": plogs["pmpo/entropy"],
                "rl/kl_to_prior": plogs["pmpo/kl"], "rl/pos_adv_frac": pos_frac,
                "rl/value_mean": values.mean().item(), "rl/return_mean": returns.mean().item(),
                "rl/continue_mean": continues.mean().item(), "rl/policy_step": float(step_policy)}

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.iteration = state["iteration"]
