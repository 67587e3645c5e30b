"""action_modes: how the game answers the fire button under each action mode (measured, real game).

Not a pipeline stage: it chose the default ``env.fire_mode`` and is re-run by hand when the
env changes (``wm action-modes``). For each fire mode (``hold``: the action's buttons for the
whole frameskip; ``tap``: fire pressed on the first emulator frame only) it plays
``eval.episodes`` (at least 30) episodes of uniform random play and of scripted fire schedules
(random movement, fire every k-th step; ``never_fire``) with the evaluation seeds, and writes
per policy: return (mean, 95% CI), episode length, fire presses per episode (new presses of a
tap button: what the game can answer with a shot) and kills per episode (reward events).
For the uniform random policy of the default mode it also measures the *delay between a fire
press and reward*: the lift P(reward at t + k | press at t) - P(reward at t + k | no press at t)
for k = 0..47 steps, which sets the discount imagination RL needs (README).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np

from wm.atomic import write_json_atomic
from wm.config import Config, EnvConfig

METRICS_PATH = Path("data/metrics/action_modes.json")
POLICIES = ("random", "never_fire", "fire_every_1", "fire_every_2", "fire_every_3", "fire_every_4")
MAX_LAG = 48
_STATE: dict[str, Any] = {}


def _init(env_cfg: EnvConfig, policy: str) -> None:
    from wm.envs.policies import make_policy
    from wm.envs.retro import RetroEnv

    _STATE["env"] = RetroEnv(env_cfg)
    _STATE["policy"] = make_policy(policy, _STATE["env"].action_space.n, action_map=env_cfg.action_map,
                                   fire=tuple(env_cfg.tap_buttons), crop=env_cfg.crop)


def fire_presses(buttons: np.ndarray, tap: np.ndarray, fire_mode: str) -> np.ndarray:
    """(T,) bool: step t starts a new press of a tap button (tap mode: every fire step)."""
    pressed = (buttons[:, tap] > 0).any(-1)
    if fire_mode == "tap":
        return pressed
    return pressed & ~np.concatenate([[False], pressed[:-1]])


def _episode(seed: int) -> dict[str, Any]:
    from wm.envs.rollout import play_episode

    env = _STATE["env"]
    ep = play_episode(env, _STATE["policy"], seed)
    presses = fire_presses(ep.buttons, env.tap_mask, env.cfg.fire_mode)
    return {"seed": seed, "ret": ep.ret, "len": len(ep), "presses": presses, "rewards": ep.rewards}


def reward_lag_lift(episodes: list[dict[str, Any]], max_lag: int = MAX_LAG) -> list[float]:
    """lift[k] = P(reward at t + k | press at t) - P(reward at t + k | no press at t)."""
    lift = []
    for k in range(max_lag):
        hit_p, n_p, hit_n, n_n = 0.0, 0, 0.0, 0
        for ep in episodes:
            press, rew = ep["presses"][: len(ep["rewards"]) - k], ep["rewards"][k:] > 0
            hit_p += rew[press].sum()
            n_p += press.sum()
            hit_n += rew[~press].sum()
            n_n += (~press).sum()
        lift.append(float(hit_p / max(n_p, 1) - hit_n / max(n_n, 1)))
    return lift


def run(cfg: Config) -> dict[str, Any]:
    from wm.stats import ci95

    start = time.perf_counter()
    episodes = max(30, cfg.eval.episodes)
    seeds = [cfg.eval.seed + i for i in range(episodes)]
    metrics: dict[str, Any] = {"episodes": episodes, "default_fire_mode": cfg.env.fire_mode}
    ctx = mp.get_context("spawn")
    for mode in ("hold", "tap"):
        env_cfg = dataclasses.replace(cfg.env, fire_mode=mode)
        for policy in POLICIES:
            with ctx.Pool(cfg.eval.workers, initializer=_init, initargs=(env_cfg, policy)) as pool:
                eps = pool.map(_episode, seeds)
            returns = [e["ret"] for e in eps]
            key = f"{mode}/{policy}"
            metrics[f"return/{key}"] = float(np.mean(returns))
            metrics[f"ci95/{key}"] = ci95(returns)
            metrics[f"length/{key}"] = float(np.mean([e["len"] for e in eps]))
            metrics[f"presses/{key}"] = float(np.mean([e["presses"].sum() for e in eps]))
            metrics[f"kills/{key}"] = float(np.mean([(e["rewards"] > 0).sum() for e in eps]))
            print(f"{key:22s} return {metrics[f'return/{key}']:7.1f} +- {metrics[f'ci95/{key}']:5.1f}  "
                  f"length {metrics[f'length/{key}']:6.1f}  presses {metrics[f'presses/{key}']:6.1f}  "
                  f"kills {metrics[f'kills/{key}']:5.1f}", flush=True)
            if mode == cfg.env.fire_mode and policy == "random":
                lift = reward_lag_lift(eps)
                metrics["reward_lag_lift"] = lift
                metrics["reward_lag_peak"] = int(np.argmax(lift))
    metrics["wall_s"] = round(time.perf_counter() - start, 1)
    write_json_atomic(METRICS_PATH, metrics)
    return metrics
