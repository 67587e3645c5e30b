"""Collection policies: a common interface so collect does not care who acts.

A policy is reset at each episode with its own seeded generator and then maps an
observation (H, W, 3) uint8 to an action index. A checkpointed agent plugs in here later.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Policy(Protocol):
    name: str

    def reset(self, rng: np.random.Generator) -> None: ...

    def act(self, obs: np.ndarray) -> int: ...


class RandomPolicy:
    """Uniform over the action map, independently each step."""

    name = "random"

    def __init__(self, n_actions: int):
        self.n_actions = n_actions
        self._rng = np.random.default_rng(0)

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng

    def act(self, obs: np.ndarray) -> int:
        return int(self._rng.integers(self.n_actions))


class StickyRandomPolicy:
    """Random actions held for a geometric number of steps (mean ``mean_steps``).

    Holding moves for a while reaches more of the screen than per-step noise does,
    which gives the world model more varied states to learn from.
    """

    name = "sticky_random"

    def __init__(self, n_actions: int, mean_steps: float):
        if mean_steps < 1:
            raise ValueError(f"collect.sticky_mean_steps must be >= 1, got {mean_steps}")
        self.n_actions = n_actions
        self.p_switch = 1.0 / mean_steps
        self._rng = np.random.default_rng(0)
        self._action = 0

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._action = int(rng.integers(self.n_actions))

    def act(self, obs: np.ndarray) -> int:
        if self._rng.random() < self.p_switch:
            self._action = int(self._rng.integers(self.n_actions))
        return self._action


POLICIES = ("random", "sticky_random", "agent:<checkpoint dir>")


def make_policy(name: str, n_actions: int, sticky_mean_steps: float = 4.0,
                tokenizer_dir: str = "data/checkpoints/tokenizer") -> Policy:
    if name == "random":
        return RandomPolicy(n_actions)
    if name == "sticky_random":
        return StickyRandomPolicy(n_actions, sticky_mean_steps)
    if name.startswith("agent:"):
        from wm.envs.neural_policy import policy_from_checkpoint

        return policy_from_checkpoint(name.removeprefix("agent:"), tokenizer_dir)
    raise ValueError(f"unknown policy '{name}'; available: {', '.join(POLICIES)}")


def check_policy_name(name: str) -> None:
    if name not in ("random", "sticky_random") and not name.startswith("agent:"):
        raise ValueError(f"unknown collect.policy '{name}'; available: {', '.join(POLICIES)}")
