"""Collection policies: a common interface so collect does not care who acts.

A policy is reset at each episode with its own seeded generator and then maps an
observation (H, W, 3) uint8 to an action index. A checkpointed agent plugs in here later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from wm.config import NO_CROP
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


# Where AimPolicy looks, as shares of the native (uncropped) frame height: rows 36-57 and 6-49
# of the 64-row frame (the ship never leaves the lower band; the score line sits above the upper).
AIM_BANDS = {"ship": (36 / 64, 58 / 64), "enemies": (6 / 64, 50 / 64)}


class AimPolicy(FireSchedule):
    """A hand-written Airstriker reference: fire every ``every``-th step and move under the
    nearest enemy (a random move when none is seen). It reads the frame with fixed colour
    rules (the ship: white pixels in rows 36-57 of the uncropped 64x64 frame; enemies: red pixels
    in rows 6-49; both bands follow ``env.crop``, see ``AIM_BANDS``), so it plays
    decoded imagined frames as it plays real ones. It is the yardstick for *aiming*: in the real
    game it earns about twice random play's reward per step (README), so a world model that
    prices it like random play does not tie kills to where the ship is."""

    def __init__(self, action_map: list[list[str]], every: int = 2, fire: tuple[str, ...] = ("B",),
                 crop: list[float] | tuple[float, ...] = NO_CROP):
        super().__init__(action_map, every, fire)
        self.name = f"aim_fire_every_{every}"
        self.crop = tuple(crop)
        moves = {tuple(sorted(b for b in combo if b not in fire)): a for a, combo in enumerate(action_map)
                 if not any(b in fire for b in combo)}
        if ("LEFT",) not in moves or ("RIGHT",) not in moves or () not in moves:
            raise ConfigValueError(f"the aim policy needs LEFT, RIGHT and no-op rows in the action map {action_map}")
        fire_of = {nf: f for nf, f in zip(self.no_fire, self.with_fire)}
        self._steer = {d: (moves[m], fire_of.get(moves[m], moves[m])) for d, m in
                       ((-1, ("LEFT",)), (0, ()), (1, ("RIGHT",)))}
        self.seen = 0  # steps where both the ship and an enemy were found (how often it aims)

    def target_direction(self, obs: np.ndarray) -> int | None:
        """-1 (left), 0 (stay), +1 (right), or None when the ship or every enemy is out of sight."""
        o = obs.astype(np.int16)
        white = (o[..., 0] > 150) & (o[..., 1] > 150) & (o[..., 2] > 150)
        red = (o[..., 0] > 140) & (o[..., 1] < 90)
        ship_rows, enemy_rows = self.bands(o.shape[0])
        ship, enemies = np.argwhere(white[ship_rows]), np.argwhere(red[enemy_rows])
        if len(ship) == 0 or len(enemies) == 0:
            return None
        x = ship[:, 1].mean()
        lowest = enemies[enemies[:, 0] >= enemies[:, 0].max() - 4]  # the nearest row of enemies
        target = lowest[np.argmin(np.abs(lowest[:, 1] - x)), 1]
        return 0 if abs(target - x) < 1.5 else (1 if target > x else -1)

    def bands(self, height: int) -> tuple[slice, slice]:
        """The ship's and the enemies' row bands in a ``height``-row frame cut by ``self.crop``."""
        top, bottom = self.crop[:2]

        def rows(band: tuple[float, float]) -> slice:
            lo, hi = (min(height, max(0, round((f - top) / (1 - top - bottom) * height))) for f in band)
            return slice(lo, hi)

        return rows(AIM_BANDS["ship"]), rows(AIM_BANDS["enemies"])

    def act(self, obs: np.ndarray) -> int:
        d = self.target_direction(obs)
        if d is None:  # nothing to aim at: the fire schedule's random move
            return super().act(obs)
        fire = self.fires(self._t)
        self._t += 1
        self.seen += 1
        return self._steer[d][1 if fire else 0]


class AimMix:
    """Collection data with some skill in it: each episode draws a skill ``s`` and a fire rate
    ``r`` from U(0, 1); each step follows the aiming reference (``AimPolicy``, firing on
    every 2nd of its own steps) with probability ``s``, else random movement firing with probability ``r``.

    Uniform random play lines the ship up under an enemy and fires only by chance (a kill on
    1.6 % of steps), so a world model trained on it sees few examples of what aiming does and
    imagination prices aiming almost like random play (README). Dreamer 4 learns from offline
    play with skill in it (the VPT contractor data in Minecraft); this is the hand-written stand-in.
    The per-episode draw keeps the whole range in the data, from random play (the RL yardstick)
    to nearly always aiming, and low fire rates keep stretches without shots."""

    name = "aim_mix"

    def __init__(self, action_map: list[list[str]], fire: tuple[str, ...] = ("B",),
                 crop: list[float] | tuple[float, ...] = NO_CROP):
        self.aim = AimPolicy(action_map, 2, fire, crop)
        self.random = RandomFireRate(action_map, fire)
        self.skill = 0.5
        self._rng = np.random.default_rng(0)

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self.skill = float(rng.random())
        self.aim.reset(rng)
        self.random.reset(rng)

    def act(self, obs: np.ndarray) -> int:
        return self.aim.act(obs) if self._rng.random() < self.skill else self.random.act(obs)


POLICIES = ("random", "sticky_random", "random_fire_rate", "aim_mix", "never_fire", "fire_every_<k>",
            "aim_fire_every_<k>", "agent:<checkpoint dir>")
NAMED = ("random", "sticky_random", "random_fire_rate", "aim_mix")  # the policies without a parameter
SCHEDULED = ("fire_every_", "aim_fire_every_")                       # prefixes of the scripted ones


def make_policy(name: str, n_actions: int, sticky_mean_steps: float = 4.0,
                tokenizer_dir: str = "data/checkpoints/tokenizer",
                action_map: list[list[str]] | None = None, fire: tuple[str, ...] = ("B",),
                crop: list[float] | tuple[float, ...] = NO_CROP) -> Policy:
    """The policy called ``name``; ``crop`` is the env's (the aiming policies read frame rows)."""
    if name == "random":
        return RandomPolicy(n_actions)
    if name == "sticky_random":
        return StickyRandomPolicy(n_actions, sticky_mean_steps)
    if name.startswith("agent:"):
        from wm.envs.neural_policy import policy_from_checkpoint

        return policy_from_checkpoint(name.removeprefix("agent:"), tokenizer_dir)
    reads_map = name in ("random_fire_rate", "aim_mix", "never_fire") or name.startswith(SCHEDULED)
    if reads_map and action_map is None:
        raise ConfigValueError(f"policy '{name}' needs the env's action map")
    if name == "random_fire_rate":
        return RandomFireRate(action_map, fire)
    if name == "aim_mix":
        return AimMix(action_map, fire, crop)
    if name.startswith("aim_fire_every_"):
        return AimPolicy(action_map, int(name.removeprefix("aim_fire_every_")), fire, crop)
    if name == "never_fire" or name.startswith("fire_every_"):
        every = 0 if name == "never_fire" else int(name.removeprefix("fire_every_"))
        return FireSchedule(action_map, every, fire)
    raise ConfigValueError(f"unknown policy '{name}'; available: {', '.join(POLICIES)}")


def check_policy_name(name: str) -> None:
    scripted = name == "never_fire" or any(name.startswith(p) and name.removeprefix(p).isdigit() for p in SCHEDULED)
    if name not in NAMED and not scripted and not name.startswith("agent:"):
        raise ConfigValueError(f"unknown collect.policy '{name}'; available: {', '.join(POLICIES)}")
