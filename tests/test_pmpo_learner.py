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

from conftest import free_port
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


def _dp_learner(world_size: int):
    torch.manual_seed(0)
    policy = nn.Linear(3, 2)
    value = nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Linear(32, 255))
    cfg = RLConfig(iterations=8, num_envs=N, horizon=H, context=1, lr=1e-2, gamma=0.9, lam=0.95, alpha=0.5, beta=0.1,
                   value_warmup=2, center="median", guard_low=0.2, guard_high=0.8, grad_clip=0.5, log_every=1,
                   ckpt_every=0, seed=0, wandb="disabled", out_dir="")
    learner = PMPOLearner(policy, value, copy.deepcopy(policy).requires_grad_(False),
                          [*policy.parameters(), *value.parameters()], cfg, make_bins(255), world_size=world_size)
    return learner, policy, value


def _dp_batches(iters: int = 8):
    """Fixed imagined batches of N trajectories: features, actions, sparse rewards, continuation."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(N, H + 1, 3, generator=g), torch.randint(0, 2, (N, H), generator=g),
             (torch.rand(N, H, generator=g) < 0.1).float() * 20, (torch.rand(N, H, generator=g) > 0.02).float())
            for _ in range(iters)]


def _dp_worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        learner, policy, value = _dp_learner(world)
        logs = [learner.update(*(x[rank::world] for x in batch)) for batch in _dp_batches()]
        torch.save({"policy": policy.state_dict(), "value": value.state_dict(),
                    "pos": [entry["rl/pos_adv_frac"] for entry in logs],
                    "steps": [entry["rl/policy_step"] for entry in logs]}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_data_parallel_update_equals_one_process_on_the_combined_batch(tmp_path):
    """Imagination RL's learner on 2 ranks (gloo), each with half of every imagined batch, ends
    where one process ends on the whole batches: whole-batch median centring, positive share,
    guard decisions and PMPO set sizes, averaged gradients, clipping after the average."""
    import torch.multiprocessing as mp

    learner, policy, value = _dp_learner(1)
    logs = [learner.update(*batch) for batch in _dp_batches()]
    assert 0 < sum(entry["rl/policy_step"] for entry in logs) < len(logs)  # warm-up skipped, then policy steps
    port = free_port()
    mp.spawn(_dp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for got in ranks:
        assert got["pos"] == pytest.approx([entry["rl/pos_adv_frac"] for entry in logs])
        assert got["steps"] == [entry["rl/policy_step"] for entry in logs]
        for name, module in (("policy", policy), ("value", value)):
            for k, v in module.state_dict().items():
                torch.testing.assert_close(got[name][k], v, atol=1e-5, rtol=1e-4)
    assert not torch.equal(ranks[0]["policy"]["weight"], _dp_learner(1)[1].weight)  # the policy moved
