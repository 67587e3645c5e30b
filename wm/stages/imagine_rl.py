"""imagine_rl: improve the policy inside the world model with PMPO (Dreamer 4 §imagination RL).

The transformer is frozen; only the policy and value heads learn. Each iteration starts
``num_envs`` imagined episodes from real context clips (``ImaginedEnv``), rolls the current
policy ``horizon`` steps with the K-step sampler, and computes lambda-returns
(gamma = 0.997, lambda = 0.95) from the reward head and the value head. The value head
regresses the returns (symlog two-hot); the policy head takes a PMPO step on the signs of
the advantages, with a reverse KL (beta = 0.3) to the frozen behaviour-cloned policy head.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import torch

from wm.atomic import write_json_atomic
from wm.config import Config, to_dict
from wm.data.shards import make_clip_loader
from wm.envs.imagined import ImaginedEnv
from wm.envs.neural_policy import load_agent
from wm.objectives.pmpo import pmpo_loss
from wm.objectives.returns import lambda_returns
from wm.objectives.twohot import make_bins, twohot_decode, twohot_loss
from wm.training.checkpoint import save_checkpoint
from wm.training.logging import RunLogger
from wm.training.trainer import CHECKPOINT

METRICS_PATH = Path("data/metrics/imagine_rl.json")
LIVE_DIR = Path("data/metrics/imagine_rl")


def run(cfg: Config, resume: bool = False) -> dict[str, Any]:
    r = cfg.rl
    start = time.perf_counter()
    torch.manual_seed(r.seed)
    agent, saved = load_agent(cfg.agent.out_dir)
    agent.requires_grad_(False)
    prior_head = copy.deepcopy(agent.policy_head)  # the behaviour-cloned policy, frozen
    heads = [agent.policy_head, agent.value_head]
    for head in heads:
        head.requires_grad_(True)
    params = [p for h in heads for p in h.parameters()]
    opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=0.0)
    bins = make_bins(agent.bins)

    loader = make_clip_loader(cfg.latents.out_dir, "train", r.context, r.num_envs, infinite=True, seed=r.seed,
                              shuffle_buffer=cfg.data.shuffle_buffer)
    batches = iter(loader)
    env = ImaginedEnv(agent, lambda seed: next(batches), r.num_envs, steps=cfg.dynamics.sample_steps,
                      ctx_noise=cfg.dynamics.ctx_noise, max_steps=r.horizon, bins=agent.bins)
    logger = RunLogger(LIVE_DIR, wandb_mode=r.wandb, project="imagine_rl", config=to_dict(cfg),
                       total_steps=r.iterations, desc="imagine_rl")
    history: list[dict[str, float]] = []
    gen = torch.Generator().manual_seed(r.seed)
    try:
        for it in range(r.iterations):
            _, info = env.reset(seed=r.seed * 100_000 + it)
            feats, actions, rewards = [info["features"]], [], []
            for _ in range(r.horizon):
                with torch.no_grad():
                    logits = agent.policy_logits(feats[-1])[:, 0]
                    a = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)
                _, rew, _, _, info = env.step(a)
                actions.append(a)
                rewards.append(torch.as_tensor(rew))
                feats.append(info["features"])
            feat = torch.stack(feats, dim=1)  # (N, H+1, D), no grad: the transformer is frozen
            act = torch.stack(actions, dim=1)
            rew = torch.stack(rewards, dim=1).float()
            with torch.no_grad():
                values = twohot_decode(agent.value_logits(feat), bins)
                returns = lambda_returns(rew, values, torch.ones_like(rew), r.gamma, r.lam)
                advantages = returns - values[:, :-1]
                prior = prior_head(feat[:, :-1]).unflatten(-1, (agent.mtp, agent.n_actions))[:, :, 0]
            logits = agent.policy_logits(feat[:, :-1])[:, :, 0]
            policy_loss, plogs = pmpo_loss(logits, act, advantages, prior, alpha=r.alpha, beta=r.beta)
            value_loss = twohot_loss(agent.value_logits(feat[:, :-1]), returns, bins).mean()
            loss = policy_loss + value_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, r.grad_clip)
            opt.step()
            logs = {"rl/imagined_return": rew.sum(1).mean().item(), "rl/policy_loss": policy_loss.item(),
                    "rl/value_loss": value_loss.item(), "rl/entropy": plogs["pmpo/entropy"],
                    "rl/kl_to_prior": plogs["pmpo/kl"], "rl/pos_adv_frac": plogs["pmpo/pos_frac"],
                    "rl/value_mean": values.mean().item()}
            history.append(logs)
            if (it + 1) % r.log_every == 0 or it + 1 == r.iterations:
                logger.log(it + 1, logs)
            logger.progress(1, ret=f"{logs['rl/imagined_return']:.2f}")
    finally:
        logger.close(history[-1] if history else None)
    if int(os.environ.get("RANK", "0")) != 0:
        return {}
    out_dir = Path(r.out_dir)
    state = {"model": agent.state_dict(), "step": r.iterations, "config": {**saved, "rl": to_dict(cfg)["rl"]}}
    save_checkpoint(out_dir / CHECKPOINT, state, state["config"])
    first = history[: max(1, len(history) // 10)]
    last = history[-max(1, len(history) // 10) :]

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return sum(x[key] for x in rows) / len(rows)

    metrics = {
        "imagined_return/first": mean(first, "rl/imagined_return"),
        "imagined_return/last": mean(last, "rl/imagined_return"),
        "entropy/first": mean(first, "rl/entropy"), "entropy/last": mean(last, "rl/entropy"),
        "kl_to_prior/last": mean(last, "rl/kl_to_prior"),
        "iterations": r.iterations, "horizon": r.horizon, "num_envs": r.num_envs,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(METRICS_PATH, metrics)
    return metrics

