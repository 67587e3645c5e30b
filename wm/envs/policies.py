"""Collection policies: a common interface so collect does not care who acts.

A policy is reset at each episode with its own seeded generator and then maps an
observation (H, W, 3) uint8 to an action index. A checkpointed agent plugs in here later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from wm.errors import ConfigValueError

if TYPE_CHECKING:
    import torch


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
            raise ConfigValueError(f"collect.sticky_mean_steps must be >= 1, got {mean_steps}")
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


class FireSchedule:
    """Scripted fire: uniformly random movement, fire on every ``every``-th step (0: never).

    ``every = 1`` is always-fire, 2 fire toggled, 3 a shot every 12 emulator frames at
    frameskip 4. Actions come from the action map: for each movement (the buttons other than
    ``fire``) the row without and the row with fire. ``actions(t, n, gen)`` is the batched form
    the imagination check uses; ``act`` is the collection-policy form for the real game.
    """

    def __init__(self, action_map: list[list[str]], every: int, fire: tuple[str, ...] = ("B",)):
        rows: dict[tuple[str, ...], dict[bool, int]] = {}
        for a, combo in enumerate(action_map):
            move = tuple(sorted(b for b in combo if b not in fire))
            rows.setdefault(move, {})[any(b in fire for b in combo)] = a
        pairs = [r for r in rows.values() if len(r) == 2]
        if every > 0 and not pairs:
            raise ConfigValueError(f"fire schedule: no action in {action_map} pairs a movement with and without {fire}")
        pairs = pairs if every > 0 else [r for r in rows.values() if False in r]
        self.no_fire = [r[False] for r in pairs]
        self.with_fire = [r.get(True, r[False]) for r in pairs]
        self.every = every
        self.name = "never_fire" if every == 0 else f"fire_every_{every}"
        self._rng = np.random.default_rng(0)
        self._t = 0

    def fires(self, t: int) -> bool:
        return self.every > 0 and t % self.every == 0

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._t = 0

    def act(self, obs: np.ndarray) -> int:
        m = int(self._rng.integers(len(self.no_fire)))
        a = self.with_fire[m] if self.fires(self._t) else self.no_fire[m]
        self._t += 1
        return a

    def actions(self, t: int, n: int, gen: torch.Generator) -> torch.Tensor:
        import torch

        table = torch.tensor(self.with_fire if self.fires(t) else self.no_fire, device=gen.device)
        return table[torch.randint(0, len(table), (n,), generator=gen, device=gen.device)]


class RandomFireRate(FireSchedule):
    """Random movement; each step fires with a probability drawn once per episode from U(0, 1).

    Uniform random play fires on half of the steps, so a world model trained on it never sees
    a stretch without shots and cannot learn that no shots means no kills (imagination then
    prices never firing like firing). Varying the rate per episode covers that dependence
    while the average rate, and the behaviour-cloned prior, stay those of uniform play.
    """

    def __init__(self, action_map: list[list[str]], fire: tuple[str, ...] = ("B",)):
        super().__init__(action_map, 1, fire)
        self.name = "random_fire_rate"
        self.rate = 0.5

    def reset(self, rng: np.random.Generator) -> None:
        super().reset(rng)
        self.rate = float(rng.random())

    def act(self, obs: np.ndarray) -> int:
        m = int(self._rng.integers(len(self.no_fire)))
        return self.with_fire[m] if self._rng.random() < self.rate else self.no_fire[m]


POLICIES = ("random", "sticky_random", "random_fire_rate", "never_fire", "fire_every_<k>", "agent:<checkpoint dir>")


def make_policy(name: str, n_actions: int, sticky_mean_steps: float = 4.0,
                tokenizer_dir: str = "data/checkpoints/tokenizer",
                action_map: list[list[str]] | None = None, fire: tuple[str, ...] = ("B",)) -> Policy:
    if name == "random":
        return RandomPolicy(n_actions)
    if name == "sticky_random":
        return StickyRandomPolicy(n_actions, sticky_mean_steps)
    if name == "random_fire_rate":
        if action_map is None:
            raise ConfigValueError(f"policy '{name}' needs the env's action map")
        return RandomFireRate(action_map, fire)
    if name == "never_fire" or name.startswith("fire_every_"):
        if action_map is None:
            raise ConfigValueError(f"policy '{name}' needs the env's action map")
        every = 0 if name == "never_fire" else int(name.removeprefix("fire_every_"))
        return FireSchedule(action_map, every, fire)
    if name.startswith("agent:"):
        from wm.envs.neural_policy import policy_from_checkpoint

        return policy_from_checkpoint(name.removeprefix("agent:"), tokenizer_dir)
    raise ConfigValueError(f"unknown policy '{name}'; available: {', '.join(POLICIES)}")


def check_policy_name(name: str) -> None:
    scripted = name == "never_fire" or (name.startswith("fire_every_") and name.removeprefix("fire_every_").isdigit())
    if name not in ("random", "sticky_random", "random_fire_rate") and not scripted and not name.startswith("agent:"):
        raise ConfigValueError(f"unknown collect.policy '{name}'; available: {', '.join(POLICIES)}")
