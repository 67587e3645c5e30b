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

Data parallel (``dist`` with several ranks, gloo or nccl): each rank imagines its own share of
the batch; the centring statistics, the positive share (so the guard decides alike on every
rank) and PMPO's set sizes are taken over the whole batch, and the gradients are averaged
before clipping, so a step equals one process's step on the combined batch
(tests/test_pmpo_learner.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from wm.config import RLConfig
from wm.errors import ConfigValueError
from wm.objectives.pmpo import pmpo_loss
from wm.objectives.returns import lambda_returns
from wm.objectives.twohot import twohot_decode, twohot_loss

Head = Callable[[torch.Tensor], torch.Tensor]


class PMPOLearner:
    def __init__(self, policy: Head, value: Head, prior: Head, params: Iterable[nn.Parameter], cfg: RLConfig,
                 bins: torch.Tensor, world_size: int = 1):
        self.policy, self.value, self.prior = policy, value, prior
        self.world_size = world_size  # > 1: an initialised process group of that many ranks
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
            whole = self._gather(adv)  # every rank's batch (this one's alone without data parallelism)
            if r.center == "mean":
                adv = adv - whole.mean(dim=0, keepdim=True)
            elif r.center == "median":
                adv = adv - whole.median(dim=0, keepdim=True).values
        return returns, values, adv

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def _sum(self, *values: float) -> list[float]:
        if self.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.bins.device)
        dist.all_reduce(t)
        return t.tolist()

    def update(self, feat: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
               continues: torch.Tensor) -> dict[str, float]:
        """One optimizer step; returns the logs (``rl/policy_step`` 1 when the policy moved)."""
        r = self.cfg
        returns, values, adv = self.advantages(feat, rewards, continues)
        n_pos, n_all = self._sum(float((adv > 0).sum()), float(adv.numel()))
        pos_frac = n_pos / n_all
        value_loss = twohot_loss(self.value(feat[:, :-1]), returns, self.bins).mean()
        step_policy = self.iteration >= r.value_warmup and r.guard_low <= pos_frac <= r.guard_high
        logits = self.policy(feat[:, :-1])
        with torch.no_grad():
            prior = self.prior(feat[:, :-1])
        counts = None if self.world_size == 1 else (n_pos, n_all - n_pos, n_all)
        policy_loss, plogs = pmpo_loss(logits, actions, adv, prior, alpha=r.alpha, beta=r.beta, counts=counts)
        policy_loss = policy_loss * self.world_size  # sums over the whole batch; the gradient average divides
        # a skipped policy step leaves the policy's gradients None, so AdamW leaves those
        # parameters (and their moment estimates) alone; a zero gradient would still move them
        loss = value_loss + policy_loss if step_policy else value_loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world_size > 1:
            for p in self.params:
                if p.grad is not None:  # skipped policy step: None on every rank alike
                    dist.all_reduce(p.grad)
                    p.grad /= self.world_size
        torch.nn.utils.clip_grad_norm_(self.params, r.grad_clip)
        self.opt.step()
        self.iteration += 1
        return {"rl/imagined_return": rewards.sum(1).mean().item(), "rl/policy_loss": policy_loss.item() / self.world_size,
                "rl/value_loss": value_loss.item(), "rl/entropy": plogs["pmpo/entropy"],
                "rl/kl_to_prior": plogs["pmpo/kl"], "rl/pos_adv_frac": pos_frac,
                "rl/value_mean": values.mean().item(), "rl/return_mean": returns.mean().item(),
                "rl/continue_mean": continues.mean().item(), "rl/policy_step": float(step_policy)}

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.iteration = state["iteration"]
