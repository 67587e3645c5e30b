"""One person's play session: the world model and (beside it) the real game, driven by the same
actions frame by frame.

The session owns no web code; ``wm.play.server`` feeds it actions and streams what it returns.
Everything the world model does goes through its owner, ``wm.world_model.WorldModel``:

- ``restart_game(seed)``: the real game is reset (random no-op start), a few no-op steps give
  ``context`` real frames, the tokenizer encodes them and the dynamics observes them, so the
  world model and the game start from the same moment; from then on both receive the same
  actions and ``psnr`` measures where imagination and reality part ways.
- ``restart_moment(index)``: the world model alone from a held-out context of the latent
  shards (``latents/val``), as imagination RL starts its episodes; the real pane is empty.
- ``step(action)``: one generated frame (K-step shortcut sampler with the KV cache), the reward
  and continuation heads' view of it, and the real game's frame after the same action.
  ``action=None`` lets the agent's policy head choose (agent mode).

Noise comes from a generator seeded by the restart seed, so the same seed and the same actions
give the same frames (what the browser test checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wm.config import EnvConfig
from wm.metrics import psnr
from wm.models.dynamics import shift_actions
from wm.world_model import Caches, WorldModel

# browser key -> game button (the env's action map names buttons as stable-retro does)
KEY_BUTTONS = {"ArrowUp": "UP", "ArrowDown": "DOWN", "ArrowLeft": "LEFT", "ArrowRight": "RIGHT",
               " ": "B", "x": "B", "X": "B", "z": "B", "Z": "B"}


@dataclass
class Frame:
    """What one step shows: uint8 (H, W, 3) frames, the action taken and the heads' view."""

    imagined: np.ndarray
    real: np.ndarray | None
    action: int
    reward: float | None
    cont: float | None
    psnr: float | None
    t: int
    real_return: float
    restarted: str = ""  # "game" / "moment" on the first frame after a restart, "game over" on the last


def action_for(buttons: list[str], action_map: list[list[str]]) -> int:
    """The action whose buttons are exactly those held; if the map has no such combination,
    the earliest-pressed buttons are let go until one matches (none held: the no-op)."""
    table = {frozenset(a): i for i, a in enumerate(action_map)}
    held = [b for i, b in enumerate(buttons) if b not in buttons[:i]]
    while held:
        if frozenset(held) in table:
            return table[frozenset(held)]
        held = held[1:]
    if frozenset() not in table:
        raise ValueError("the action map has no no-op action ([]): play needs one for 'no key held'")
    return table[frozenset()]


def frame_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) between two uint8 (H, W, 3) frames, as ``wm.metrics.psnr`` scores images."""
    def to_image(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255.0

    return float(psnr(to_image(a), to_image(b))[0])


class PlaySession:
    def __init__(self, world: WorldModel, env_cfg: EnvConfig | None, action_map: list[list[str]], *,
                 context: int = 8, latents_dir: str | Path | None = None):
        if world.agent is None or world.tokenizer is None:
            raise ValueError("play needs a world model with an agent (heads, policy) and a tokenizer")
        self.world = world
        self.action_map = action_map
        self.noop = action_for([], action_map)
        self.context = context
        self.latents_dir = Path(latents_dir) if latents_dir else None
        self.env = None
        if env_cfg is not None:
            from wm.envs.retro import RetroEnv

            self.env = RetroEnv(env_cfg)
        self._moments: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._caches: Caches | None = None
        self._gen = torch.Generator(device=world.device)
        self._feat: torch.Tensor | None = None
        self._z: torch.Tensor | None = None  # the last frame's latents (the frame reward head reads two)
        self._real: np.ndarray | None = None
        self._real_return = 0.0
        self._t = 0

    # ------------------------------------------------------------------ starts
    def _to_frames(self, frames: np.ndarray) -> torch.Tensor:  # (T, H, W, 3) uint8 -> (1, T, 3, H, W)
        return torch.from_numpy(np.ascontiguousarray(frames)).to(self.world.device).permute(0, 3, 1, 2)[None].float() / 255

    def _start(self, z: torch.Tensor, prev: torch.Tensor, seed: int) -> np.ndarray:
        self._gen.manual_seed(seed)
        self._caches = self.world.new_caches()
        feat = self.world.observe(z, prev, self._caches.dynamics, self._gen)
        self._feat = feat[:, -1:]
        self._z = z[:, -1:]
        self._t = 0
        return self._render(self.world.decode(z, self._caches)[0, -1])

    @staticmethod
    def _render(frame: torch.Tensor) -> np.ndarray:
        return (frame.permute(1, 2, 0) * 255).round().byte().cpu().numpy()

    @torch.inference_mode()
    def restart_game(self, seed: int = 0) -> Frame:
        """Real game and world model from the same real moment (needs the game)."""
        if self.env is None:
            raise ValueError("this session has no real game (started with --no-game); restart from a real moment")
        obs, _ = self.env.reset(seed=seed)
        frames = [obs]
        for _ in range(self.context - 1):
            obs, _, _, _, _ = self.env.step(self.noop)
            frames.append(obs)
        self._real, self._real_return = frames[-1], 0.0
        z = self.world.encode(self._to_frames(np.stack(frames)))
        prev = torch.tensor([[-1] + [self.noop] * (self.context - 1)], device=self.world.device)
        imagined = self._start(z, prev, seed)
        return Frame(imagined, self._real, self.noop, None, None, frame_psnr(imagined, self._real), 0, 0.0, "game")

    def _load_moments(self, n: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
        from wm.data.shards import make_clip_loader

        if self.latents_dir is None or not (self.latents_dir / "val").exists():
            raise ValueError(f"no held-out latents under {self.latents_dir}/val: run `wm cache-latents` "
                             "(or `dvc pull data/latents`) to restart from a real moment")
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        for b in make_clip_loader(self.latents_dir, "val", self.context, 1, shuffle=True, seed=0):
            out.append((b["latents"].float(), b["actions"]))
            if len(out) >= n:
                break
        if not out:
            raise ValueError(f"{self.latents_dir}/val holds no clip of {self.context} frames")
        return out

    @torch.inference_mode()
    def restart_moment(self, index: int = 0, seed: int = 0) -> Frame:
        """The world model alone from held-out real context number ``index`` (cycled)."""
        if self._moments is None:
            self._moments = self._load_moments()
        z, actions = self._moments[index % len(self._moments)]
        z, actions = z.to(self.world.device), actions.to(self.world.device)
        prev = shift_actions(actions)
        self._real, self._real_return = None, 0.0
        imagined = self._start(z, prev, seed)
        return Frame(imagined, None, self.noop, None, None, None, 0, 0.0, "moment")

    # ------------------------------------------------------------------ one frame
    @torch.inference_mode()
    def step(self, action: int | None) -> Frame:
        """One frame after ``action`` (None: the agent's policy chooses from the last frame's
        features) in the world model and, when playing side by side, in the real game."""
        if self._caches is None:
            raise RuntimeError("restart the session before stepping it")
        world = self.world
        if action is None:
            logits = world.agent.policy_logits(self._feat)[0, -1, 0]
            action = int(torch.multinomial(logits.softmax(-1), 1, generator=self._gen))
        if not 0 <= action < world.n_actions:
            raise ValueError(f"action {action} outside the action map (0..{world.n_actions - 1})")
        a = torch.tensor([[action]], device=world.device)
        z = world.sample(a, self._caches.dynamics, self._gen)
        feat = world.observe(z, a, self._caches.dynamics, self._gen)
        self._feat = feat
        imagined = self._render(world.decode(z, self._caches)[0, -1])
        reward = float(world.reward(feat, self._z, z)[0, -1])
        self._z = z
        cont = float(world.continuation(feat)[0, -1])
        self._t += 1
        real, restarted, score = None, "", None
        if self._real is not None and self.env is not None:
            obs, r, terminated, truncated, _ = self.env.step(action)
            self._real_return += r
            real, score = obs, frame_psnr(imagined, obs)
            self._real = obs
            if terminated or truncated:
                restarted = "game over"
        return Frame(imagined, real, action, reward, cont, score, self._t, self._real_return, restarted)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def describe(self) -> dict[str, Any]:
        return {"action_map": self.action_map, "height": int(self.world.tokenizer.height),
                "width": int(self.world.tokenizer.width), "game": self.env is not None,
                "moments": self.latents_dir is not None, "steps": self.world.steps}
