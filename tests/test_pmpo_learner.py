"""PMPO with a working baseline learns a delayed, non-Markov-looking reward that the old set-up missed.

The synthetic imagined env: two actions (0 = move, 1 = fire); a shot lands, and pays 1, when
FIRE follows a non-FIRE step, and the reward arrives ``DELAY`` steps later (as a kill follows a
shot in the game). The state the policy sees is whether the previous action fired. Optimum:
alternate, 0.5 hits per step; uniform random play scores 0.25.
"""

import copy

import pytest
import torch
from torch import nn

from wm.config import RLConfig
from wm.objectives.twohot import make_bins
from wm.training.pmpo_learner import PMPOLearner

N, H, DELAY, ITERS = 16, 16, 3, 300


def _features(prev: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.ones_like(prev, dtype=torch.float), prev.float(), 1 - prev.float()], -1)


def train(old: bool, seed: int = 0) -> tuple[float, float]:
    """-> (hits per step over the last 20 iterations, mean positive-advantage share)."""
    torch.manual_seed(seed)
    policy = nn.Linear(3, 2)
    nn.init.zeros_(policy.weight)
    nn.init.zeros_(policy.bias)  # uniform, like a behaviour-cloned random player
    value = nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Linear(32, 255))
    if not old:  # the fix: zero-initialised value output
        nn.init.zeros_(value[-1].weight)
        nn.init.zeros_(value[-1].bias)
    prior = copy.deepcopy(policy).requires_grad_(False)
    # the old baseline: gamma 0.997, no warm-up, no centring, no guard rails (random-init value)
    cfg = RLConfig(iterations=ITERS, num_envs=N, horizon=H, context=1, lr=1e-2, gamma=0.997 if old else 0.9,
                   lam=0.95, alpha=0.5, beta=0.1, value_warmup=0 if old else 10, center="none" if old else "median",
                   guard_low=0.0 if old else 0.2, guard_high=1.0 if old else 0.8, grad_clip=1.0, log_every=1, ckpt_every=0,
                   seed=seed, wandb="disabled", out_dir="")
    learner = PMPOLearner(policy, value, prior, [*policy.parameters(), *value.parameters()], cfg, make_bins(255))
    gen = torch.Generator().manual_seed(seed)
    rates, pos = [], []
    for _ in range(ITERS):
        prev = torch.zeros(N, dtype=torch.long)
        feats, actions, hits = [_features(prev)], [], []
        for _ in range(H):
            with torch.no_grad():
                a = torch.multinomial(policy(feats[-1]).softmax(-1), 1, generator=gen).squeeze(-1)
            hits.append(((a == 1) & (prev == 0)).float())
            actions.append(a)
            prev = a
            feats.append(_features(prev))
        hit = torch.stack(hits, 1)
        reward = torch.cat([torch.zeros(N, DELAY), hit[:, : H - DELAY]], 1)
        logs = learner.update(torch.stack(feats, 1), torch.stack(actions, 1), reward, torch.ones_like(reward))
        rates.append(hit.mean().item())
        pos.append(logs["rl/pos_adv_frac"])
    return sum(rates[-20:]) / 20, sum(pos) / len(pos)


def test_pmpo_reaches_the_optimum_and_the_old_baseline_does_not():
    rate, pos = train(old=False)
    assert rate >= 0.9 * 0.5, rate  # >= 90 % of the optimum (alternate fire: 0.5 per step)
    assert 0.3 <= pos <= 0.7, pos  # a balanced sign split
    old_rate, old_pos = train(old=True)
    assert old_pos > 0.85, old_pos  # nearly every advantage positive, as in the committed run before
    assert old_rate < 0.9 * 0.5, old_rate


def test_value_warmup_and_guard_rails_skip_policy_steps():
    policy, value = nn.Linear(3, 2), nn.Linear(3, 255)
    nn.init.zeros_(value.weight)
    nn.init.zeros_(value.bias)
    cfg = RLConfig(iterations=3, num_envs=4, horizon=5, context=1, lr=1e-2, gamma=0.9, lam=0.95, alpha=0.5, beta=0.1,
                   value_warmup=2, center="none", guard_low=0.2, guard_high=0.8, grad_clip=1.0, log_every=1, ckpt_every=0, seed=0,
                   wandb="disabled", out_dir="")
    learner = PMPOLearner(policy, value, copy.deepcopy(policy), [*policy.parameters(), *value.parameters()], cfg,
                          make_bins(255))
    feat, act = torch.randn(4, 6, 3), torch.randint(0, 2, (4, 5))
    before = policy.weight.detach().clone()
    for _ in range(2):
        logs = learner.update(feat, act, torch.ones(4, 5), torch.ones(4, 5))
        assert logs["rl/policy_step"] == 0.0
    torch.testing.assert_close(policy.weight, before)  # warm-up: the policy did not move
    learner.update(feat, act, torch.randn(4, 5), torch.ones(4, 5))  # a policy step (guard rails pass)
    assert learner.opt.state[policy.weight]["step"] == 1
    moved = policy.weight.detach().clone()
    # rewards far above any value learned so far: every advantage positive -> outside [0.2, 0.8]
    logs = learner.update(feat, act, torch.full((4, 5), 100.0), torch.ones(4, 5))
    assert logs["rl/pos_adv_frac"] == pytest.approx(1.0) and logs["rl/policy_step"] == 0.0
    torch.testing.assert_close(policy.weight, moved)  # a skipped step does not move it (no stale momentum)
