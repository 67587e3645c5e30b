"""stable-retro behind a small discrete action space, the way the world model sees a game.

``RetroEnv`` is a gymnasium env: a per-game discrete action map (button combinations),
frameskip (rewards summed; the observation is the last emulator frame, or with ``maxpool``
the pixel-wise max of the last two, since sprites flicker), sticky actions (the previous
action is repeated with probability ``sticky_prob``, as in ALE v5), a resize to
``height x width`` RGB inside the env (so worker processes ship small frames; ``crop`` cuts
shares of the native frame's edges off first, e.g. a score line), random no-op
starts (``noop_max``) and a step limit. The raw MultiBinary buttons pressed are returned in
``info["buttons"]`` and the lives left in ``info["lives"]`` (-1 if the game has none).

``fire_mode``: with ``hold`` an action holds its buttons for the whole frameskip. Games that
act on a new *press* (Airstriker fires on pressing B) then make an action's effect depend on
the previous action: a second fire step in a row holds B and fires nothing. With ``tap`` the
``tap_buttons`` are pressed on the first emulator frame of the frameskip only, so every fire
action is a new press and the game's response to an action no longer depends on the last one.

One emulator per process is a stable-retro rule: use ``vector.make_vector_env`` (subprocess
workers) or one ``RetroEnv`` per collection worker.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image

from wm.config import EnvConfig, check_crop
from wm.errors import ConfigValueError, UserError


class GameNotFoundError(UserError, ValueError):
    """The game id is not one stable-retro knows."""


class RomNotFoundError(UserError, FileNotFoundError):
    """stable-retro knows the game but its ROM has not been imported."""


def check_game(game: str, state: str | None = None) -> None:
    """Raise a clear error for an unknown game, a missing ROM, or an unknown state."""
    import stable_retro

    games = stable_retro.data.list_games(stable_retro.data.Integrations.ALL)
    if game not in games:
        close = difflib.get_close_matches(game, games, n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise GameNotFoundError(
            f"unknown game '{game}'.{hint} `python -c \"import stable_retro; "
            f"print(stable_retro.data.list_games())\"` lists all {len(games)} games."
        )
    try:
        stable_retro.data.get_romfile_path(game, stable_retro.data.Integrations.ALL)
    except FileNotFoundError as err:
        raise RomNotFoundError(
            f"the ROM for '{game}' is not installed. stable-retro ships only a few ROMs "
            f"(e.g. Airstriker-Genesis-v0); import your own legally obtained ROM with "
            f"`python -m stable_retro.import <dir-with-roms>` and run again."
        ) from err
    if state is not None:
        states = stable_retro.data.list_states(game, stable_retro.data.Integrations.ALL)
        if state not in states:
            raise GameNotFoundError(f"unknown state '{state}' for {game}; available: {', '.join(states)}")


class RetroEnv(gym.Env):
    """A retro game with discrete actions, frameskip, sticky actions and resized RGB frames."""

    metadata = {"render_modes": []}

    def __init__(self, cfg: EnvConfig):
        import stable_retro

        check_game(cfg.game, cfg.state)
        self.cfg = cfg
        state = cfg.state if cfg.state is not None else stable_retro.State.DEFAULT
        self._emu = stable_retro.make(cfg.game, state=state, render_mode=None)  # headless
        self.buttons: list[str] = list(self._emu.unwrapped.buttons)
        self.button_table = build_button_table(cfg.action_map, self.buttons, cfg.game)
        if cfg.fire_mode not in ("hold", "tap"):
            raise ConfigValueError(f"env.fire_mode must be 'hold' or 'tap', got '{cfg.fire_mode}'")
        if cfg.resize not in ("box", "boxmax"):
            raise ConfigValueError(f"env.resize must be 'box' or 'boxmax', got '{cfg.resize}'")
        check_crop(cfg.crop)
        if cfg.noop_max < 0:
            raise ConfigValueError(f"env.noop_max must be >= 0, got {cfg.noop_max}")
        self.tap_mask = build_button_table([list(cfg.tap_buttons)], self.buttons, cfg.game)[0].astype(bool)
        self.action_space = gym.spaces.Discrete(len(self.button_table))
        self.observation_space = gym.spaces.Box(0, 255, (cfg.height, cfg.width, 3), np.uint8)
        self._rng = np.random.default_rng()
        self._prev_action = 0
        self._t = 0
        self.emu_frames = 0  # emulator steps since construction (for throughput figures)

    @property
    def n_buttons(self) -> int:
        return len(self.buttons)

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        frame = crop_frame(frame, self.cfg.crop)
        h, w = frame.shape[:2]
        if (h, w) == (self.cfg.height, self.cfg.width):
            return frame
        # BOX = area averaging: a few-pixel sprite fades but does not vanish, as it can with
        # nearest or non-antialiased bilinear sampling. boxmax: area-average to twice the size,
        # then the max of each 2x2 block, so a one-pixel bullet keeps ~4x the intensity it has
        # after a plain box filter (320x224 -> 64x64 averages 5 x 3.5 native pixels).
        if self.cfg.resize == "box":
            return np.asarray(Image.fromarray(frame).resize((self.cfg.width, self.cfg.height), Image.Resampling.BOX))
        big = np.asarray(Image.fromarray(frame).resize((2 * self.cfg.width, 2 * self.cfg.height),
                                                       Image.Resampling.BOX))
        return big.reshape(self.cfg.height, 2, self.cfg.width, 2, -1).max(axis=(1, 3))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        obs, info = self._emu.reset(seed=seed)
        self._prev_action = 0
        self._t = 0
        idle = np.zeros(self.n_buttons, np.uint8)
        last = None
        for _ in range(int(self._rng.integers(0, self.cfg.noop_max + 1)) * self.cfg.frameskip):
            last = obs
            obs, _, _, _, info = self._emu.step(idle)
            self.emu_frames += 1
        if self.cfg.maxpool and last is not None:  # as every step's observation
            obs = np.maximum(obs, last)
        return self._resize(obs), {**info, "buttons": idle, "lives": int(info.get("lives", -1))}

    def step(self, action: int):
        action = int(action)
        if not 0 <= action < len(self.button_table):
            raise ValueError(f"action {action} outside the action map (0..{len(self.button_table) - 1})")
        if self.cfg.sticky_prob > 0 and self._rng.random() < self.cfg.sticky_prob:
            action = self._prev_action
        self._prev_action = action
        buttons = self.button_table[action]
        released = buttons * ~self.tap_mask if self.cfg.fire_mode == "tap" else buttons
        total = 0.0
        terminated = truncated = False
        info: dict[str, Any] = {}
        obs = last = None
        for i in range(self.cfg.frameskip):
            last = obs
            obs, reward, terminated, truncated, info = self._emu.step(buttons if i == 0 else released)
            self.emu_frames += 1
            total += float(reward)
            if terminated or truncated:
                break
        self._t += 1
        if self._t >= self.cfg.max_episode_steps:
            truncated = True
        if self.cfg.maxpool and last is not None:
            obs = np.maximum(obs, last)
        info = {**info, "buttons": buttons.copy(), "action": action, "lives": int(info.get("lives", -1))}
        return self._resize(obs), total, bool(terminated), bool(truncated), info

    def close(self) -> None:
        self._emu.close()


def crop_frame(frame: np.ndarray, crop: list[float]) -> np.ndarray:
    """(H, W, C) frame without the ``crop`` shares of its edges, each rounded to whole pixels
    half up (``floor(share * size + 0.5)``, the rule the video import gives ffmpeg)."""
    if not any(crop):
        return frame
    h, w = frame.shape[:2]
    top, bottom, left, right = (math.floor(c * n + 0.5) for c, n in zip(crop, (h, h, w, w)))
    return frame[top:h - bottom, left:w - right]


def build_button_table(action_map: list[list[str]], buttons: list[str], game: str) -> np.ndarray:
    """(n_actions, n_buttons) uint8 table: row a = the buttons action a presses."""
    if not action_map:
        raise ConfigValueError(f"env.action_map is empty for {game}")
    table = np.zeros((len(action_map), len(buttons)), np.uint8)
    for a, combo in enumerate(action_map):
        for name in combo:
            if name not in buttons:
                raise ConfigValueError(
                    f"env.action_map[{a}] uses button '{name}', which {game} does not have; "
                    f"its buttons are {buttons}"
                )
            table[a, buttons.index(name)] = 1
    return table


def measure_raw_steps_per_s(game: str, state: str | None, seconds: float, seed: int = 0) -> float:
    """Raw emulator steps/s in this process: random buttons, full frames, no wrapper."""
    import time

    import stable_retro

    check_game(game, state)
    emu = stable_retro.make(game, state=state or stable_retro.State.DEFAULT, render_mode=None)
    rng = np.random.default_rng(seed)
    emu.reset(seed=seed)
    n = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n == 0:
        _, _, term, trunc, _ = emu.step(rng.integers(0, 2, emu.action_space.n, dtype=np.uint8))
        n += 1
        if term or trunc:
            emu.reset()
    emu.close()
    return n / elapsed
