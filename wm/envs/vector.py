"""Subprocess vector env: one emulator per process (a stable-retro rule), all cores used.

For policies that batch their decisions (a neural agent acting on many envs at once).
Random collection does not need a per-step round trip and uses ``stages.collect``'s
self-contained workers instead, which is faster (see ``wm/stages/collect.py``).
"""

from __future__ import annotations

from functools import partial

import gymnasium as gym

from wm.config import EnvConfig
from wm.envs.retro import RetroEnv, check_game


def _make(cfg: EnvConfig) -> RetroEnv:
    return RetroEnv(cfg)


def make_vector_env(cfg: EnvConfig, num_envs: int) -> gym.vector.AsyncVectorEnv:
    """``num_envs`` RetroEnvs in subprocesses; seed them with ``reset(seed=[...])``."""
    check_game(cfg.game, cfg.state)  # fail here, clearly, not inside a worker process
    # "spawn": a fresh interpreter per worker, safe beside torch threads and emulator state.
    return gym.vector.AsyncVectorEnv([partial(_make, cfg) for _ in range(num_envs)], context="spawn")
