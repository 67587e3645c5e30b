"""One episode of a policy in the real game (a RetroEnv), and the seed of episode i.

Shared by collection (which stores the episodes), evaluation and the action-mode measurement
(which score them): whatever plays the game plays it through ``play_episode``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wm.data.episodes import Episode


def episode_seed(base_seed: int, episode: int) -> int:
    return int(np.random.SeedSequence([base_seed, episode]).generate_state(1)[0])


def play_episode(env: Any, policy: Any, seed: int, on_step: Any = None) -> Episode:
    """Roll one episode of ``policy`` in ``env`` (a RetroEnv) with the given seed."""
    obs, info = env.reset(seed=seed)
    policy.reset(np.random.default_rng(seed))
    frames, actions, buttons, rewards, terminals, lives = [], [], [], [], [], []
    done = False
    while not done:
        action = policy.act(obs)
        frames.append(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(info["action"])  # the action applied (after sticky repeats)
        buttons.append(info["buttons"])
        rewards.append(reward)
        terminals.append(terminated)
        lives.append(info.get("lives", -1))
        done = terminated or truncated
        if on_step is not None:
            on_step()
    return Episode(
        frames=np.stack(frames),
        actions=np.asarray(actions, np.int64),
        buttons=np.stack(buttons).astype(np.uint8),
        rewards=np.asarray(rewards, np.float32),
        terminals=np.asarray(terminals, bool),
        meta={"seed": seed, "truncated": bool(not terminals[-1])},
        lives=np.asarray(lives, np.int16),
    )
