"""imagine_rl: improve the policy inside the world model with PMPO (Dreamer 4 §imagination RL).

The transformer is frozen; only the policy and value heads learn. Each iteration starts
``num_envs`` imagined episodes from real context clips (``ImaginedEnv``), rolls the current
policy ``horizon`` steps with the K-step sampler, and hands the trajectories to
``PMPOLearner`` (wm/training/pmpo_learner.py): lambda-returns from the reward head, the
continuation head and the value head; the value head regresses them (two-hot), after
``rl.value_warmup`` value-only iterations the policy head takes a PMPO step on the signs of
the centred advantages, with a reverse KL (``rl.beta``) to the frozen behaviour-cloned head.

Every ``rl.ckpt_every`` iterations the heads, the optimizer, the sampling generator and the
history are checkpointed atomically; ``--resume`` continues from there exactly (the contexts
and imagination noise are functions of the iteration). A non-finite loss stops the run with
``NonFiniteLossError`` and leaves the last good checkpoint.
"""

from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from wm.atomic import write_json_atomic
from wm.config import Config, to_dict
from wm.data.shards import make_clip_loader
from wm.envs.imagined import ImaginedEnv
from wm.objectives.twohot import make_bins
from wm.training.logging import RunLogger
from wm.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from wm.training.distributed import DistInfo, cleanup, init_distributed
from wm.training.pmpo_learner import PMPOLearner
from wm.training.trainer import CHECKPOINT, NonFiniteLossError
from wm.world_model import WorldModel

METRICS_PATH = Path("data/metrics/imagine_rl.json")
LIVE_DIR = Path("data/metrics/imagine_rl")


def run(cfg: Config, resume: bool = False) -> dict[str, Any]:
    start = time.perf_counter()
    # under torchrun each rank imagines rl.num_envs trajectories of its own; the learner takes its
    # statistics over all of them and averages the gradients (wm/training/pmpo_learner.py)
    info = init_distributed("ddp" if "WORLD_SIZE" in os.environ else "none")
    try:
        return _run(cfg, info, start, resume)
    finally:
        cleanup(info)


def _run(cfg: Config, info: DistInfo, start: float, resume: bool) -> dict[str, Any]:
    r = cfg.rl
    torch.manual_seed(r.seed)
    device = info.device
    world, saved = WorldModel.load(cfg.agent.out_dir, steps=cfg.dynamics.sample_steps, device=device)
    agent = world.agent
    agent.requires_grad_(False)
    prior_head = copy.deepcopy(agent.policy_head)  # the behaviour-cloned policy, frozen
    heads = [agent.policy_head, agent.value_head]
    for head in heads:
        head.requires_grad_(True)
    params = [p for h in heads for p in h.parameters()]

    def prior(feat: torch.Tensor) -> torch.Tensor:
        return prior_head(feat).unflatten(-1, (agent.mtp, agent.n_actions))[..., 0, :]

    learner = PMPOLearner(lambda feat: agent.policy_logits(feat)[..., 0, :], agent.value_logits, prior, params, r,
                          make_bins(agent.bins).to(device), world_size=info.world_size)

    loader = make_clip_loader(cfg.latents.out_dir, "train", r.context, r.num_envs, infinite=True, seed=r.seed,
                              shuffle_buffer=cfg.data.shuffle_buffer, rank=info.rank, world_size=info.world_size)
    batches = iter(loader)
    env = ImaginedEnv(world, lambda seed: next(batches), r.num_envs, max_steps=r.horizon)
    history: list[dict[str, float]] = []
    gen = torch.Generator(device=device).manual_seed(r.seed + 1000 * info.rank)
    out_dir = Path(r.out_dir)
    run_config = {**saved, "rl": to_dict(cfg)["rl"]}
    first_it = 0
    if resume:
        state = load_checkpoint(out_dir / CHECKPOINT)
        if state.get("config", {}).get("rl") != run_config["rl"] or "learner" not in state:
            raise CheckpointError(f"{out_dir / CHECKPOINT} is not a resumable checkpoint of this rl config; "
                                  "run without --resume")
        agent.load_state_dict(state["model"])
        learner.load_state_dict(state["learner"])
        gen.set_state(state["generator"])
        history = state["history"]
        first_it = state["step"]
        for _ in range(first_it):  # one context batch per iteration
            next(batches)

    logger = RunLogger(LIVE_DIR, wandb_mode=r.wandb, project="imagine_rl", config=to_dict(cfg),
                       total_steps=r.iterations, start_step=first_it, enabled=info.is_main, desc="imagine_rl")

    def save(done: int) -> None:  # rank 0 (every rank holds the same heads)
        if not info.is_main:
            return
        state = {"model": agent.state_dict(), "step": done, "config": run_config, "learner": learner.state_dict(),
                 "generator": gen.get_state(), "history": history}
        save_checkpoint(out_dir / CHECKPOINT, state, run_config)

    try:
        for it in range(first_it, r.iterations):
            _, obs = env.reset(seed=r.seed * 100_000 + it + 10_000_000 * info.rank)
            feats, actions, rewards, conts = [obs["features"]], [], [], []
            for _ in range(r.horizon):
                with torch.no_grad():
                    logits = agent.policy_logits(feats[-1])[:, 0]
                    a = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)
                _, rew, _, _, obs = env.step(a)
                actions.append(a)
                rewards.append(torch.as_tensor(rew, device=device))
                conts.append(obs["continue"])
                feats.append(obs["features"])
            # (N, H + 1, D) features, no grad: the transformer is frozen
            logs = learner.update(torch.stack(feats, dim=1), torch.stack(actions, dim=1),
                                  torch.stack(rewards, dim=1).float(), torch.stack(conts, dim=1).float())
            if not all(math.isfinite(v) for v in logs.values()):
                raise NonFiniteLossError(f"imagine_rl: non-finite loss at iteration {it + 1} ({logs}); "
                                         f"the last good checkpoint is kept in {out_dir}")
            history.append(logs)
            if (it + 1) % r.log_every == 0 or it + 1 == r.iterations:
                logger.log(it + 1, logs)
            if r.ckpt_every > 0 and (it + 1) % r.ckpt_every == 0 and it + 1 < r.iterations:
                save(it + 1)
            logger.progress(1, ret=f"{logs['rl/imagined_return']:.2f}")
    finally:
        logger.close(history[-1] if history else None)
    if not info.is_main:
        return {}
    save(r.iterations)
    first = history[: max(1, len(history) // 10)]
    last = history[-max(1, len(history) // 10) :]

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return sum(x[key] for x in rows) / len(rows)

    stepped = [h for h in history if h["rl/policy_step"] > 0] or history
    metrics = {  # the positive-advantage share over all iterations, warm-up included
        "rl/pos_adv_frac_mean": mean(history, "rl/pos_adv_frac"),
        "rl/pos_adv_frac_min": min(h["rl/pos_adv_frac"] for h in history),
        "rl/pos_adv_frac_max": max(h["rl/pos_adv_frac"] for h in history),
        "rl/policy_steps": int(sum(h["rl/policy_step"] for h in history)),
        "rl/value_warmup": r.value_warmup,
        "continue/mean": mean(history, "rl/continue_mean"),
        "imagined_return/first_policy_steps": mean(stepped[: max(1, len(stepped) // 10)], "rl/imagined_return"),
        "imagined_return/first": mean(first, "rl/imagined_return"),
        "imagined_return/last": mean(last, "rl/imagined_return"),
        "entropy/first": mean(first, "rl/entropy"), "entropy/last": mean(last, "rl/entropy"),
        "kl_to_prior/last": mean(last, "rl/kl_to_prior"),
        "iterations": r.iterations, "horizon": r.horizon, "num_envs": r.num_envs,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(METRICS_PATH, metrics)
    return metrics

