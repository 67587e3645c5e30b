"""One episode in memory and on disk (the collect stage's output, the shard stage's input).

Time convention, used everywhere downstream: ``frames[t]`` is what the agent saw before
choosing ``actions[t]``; ``rewards[t]`` and ``terminals[t]`` are what that action caused.
The observation after the last action is not stored. Action-free data (imported video)
has ``actions == -1`` and ``action_free == True``.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NO_ACTION = -1


@dataclass
class Episode:
    frames: np.ndarray  # (T, H, W, 3) uint8
    actions: np.ndarray  # (T,) int64, NO_ACTION for action-free video
    buttons: np.ndarray  # (T, n_buttons) uint8, raw MultiBinary pressed
    rewards: np.ndarray  # (T,) float32
    terminals: np.ndarray  # (T,) bool: the game ended after this step
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.frames)
        for name in ("actions", "buttons", "rewards", "terminals"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"episode field {name} has {len(getattr(self, name))} steps, frames have {n}")
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise ValueError(f"frames must be (T, H, W, 3) uint8, got {self.frames.shape} {self.frames.dtype}")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def ret(self) -> float:
        return float(self.rewards.sum())


@dataclass
class EpisodeInfo:
    """What the manifest records about one episode."""

    episode: int
    length: int
    ret: float
    seed: int
    file: str
    action_free: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_ARRAYS = ("frames", "actions", "buttons", "rewards", "terminals")


def save_episode(ep: Episode, path: Path, compresslevel: int = 1) -> None:
    """Write ``ep`` as a .npz (zip, deflate level ``compresslevel``), atomically.

    ``np.savez_compressed`` cannot set the level; level 1 costs a fraction of level 6's
    CPU time, which collection workers need for emulation.
    """
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as zf:
        for name in _ARRAYS:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(getattr(ep, name)), allow_pickle=False)
            zf.writestr(f"{name}.npy", buf.getvalue())
        zf.writestr("meta.json", json.dumps(ep.meta))
    tmp.replace(path)


def load_episode(path: Path) -> Episode:
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            arrays = {n: np.lib.format.read_array(io.BytesIO(zf.read(f"{n}.npy")), allow_pickle=False) for n in _ARRAYS}
            meta = json.loads(zf.read("meta.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as err:
        raise ValueError(f"corrupt or unreadable episode file {path}: {err}") from err
    return Episode(meta=meta, **arrays)
