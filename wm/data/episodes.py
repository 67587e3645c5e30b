"""One episode in memory and on disk (the collect stage's output, the shard stage's input).

Time convention, used everywhere downstream: ``frames[t]`` is what the agent saw before
choosing ``actions[t]``; ``rewards[t]`` and ``terminals[t]`` are what that action caused.
The observation after the last action is not stored. Action-free data (imported video)
has ``actions == -1`` and ``action_free == True``. ``lives[t]`` is the lives left after
``actions[t]`` (-1: the game reports none); ``continues()`` turns it into the continuation
target the agent's continuation head learns: 0 where a step lost a life or ended the game.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wm.errors import CorruptInputError

NO_ACTION = -1


@dataclass
class Episode:
    frames: np.ndarray  # (T, H, W, 3) uint8
    actions: np.ndarray  # (T,) int64, NO_ACTION for action-free video
    buttons: np.ndarray  # (T, n_buttons) uint8, raw MultiBinary pressed
    rewards: np.ndarray  # (T,) float32
    terminals: np.ndarray  # (T,) bool: the game ended after this step
    meta: dict[str, Any] = field(default_factory=dict)
    lives: np.ndarray | None = None  # (T,) int16 lives left after each step; None -> -1 (unknown)

    def __post_init__(self) -> None:
        n = len(self.frames)
        if self.lives is None:
            self.lives = np.full(n, -1, np.int16)
        for name in ("actions", "buttons", "rewards", "terminals", "lives"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"episode field {name} has {len(getattr(self, name))} steps, frames have {n}")
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise ValueError(f"frames must be (T, H, W, 3) uint8, got {self.frames.shape} {self.frames.dtype}")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def ret(self) -> float:
        return float(self.rewards.sum())

    def continues(self) -> np.ndarray:
        """(T,) float32: 0 where step t lost a life or ended the game, else 1."""
        return continuation(self.lives, self.terminals)


def continuation(lives: np.ndarray, terminals: np.ndarray) -> np.ndarray:
    """Continuation targets from lives left after each step (-1 = unknown) and terminals:
    0 where step t lost a life (lives[t] < lives[t-1]) or ended the game, else 1."""
    lives = np.asarray(lives).astype(np.int64)
    before = np.concatenate([lives[:1], lives[:-1]])
    lost = (lives < before) & (before >= 0) & (lives >= 0)
    return (~(lost | np.asarray(terminals, bool))).astype(np.float32)


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


_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip header can hold


def npy_bytes(arr: np.ndarray) -> bytes:
    """``arr`` as the bytes of a .npy file (no pickles)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def zip_write(zf: zipfile.ZipFile, name: str, data: bytes, level: int) -> None:
    """Add ``data`` to ``zf`` as ``name`` (deflate at ``level``) with a fixed timestamp and mode, so
    the same arrays give byte-identical files whenever they are written (``writestr`` with a plain
    name stamps the current time, and two writes a second apart would hash differently)."""
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data, compresslevel=level)


def save_episode(ep: Episode, path: Path, compresslevel: int = 1) -> None:
    """Write ``ep`` as a .npz (zip, deflate level ``compresslevel``), atomically.

    ``np.savez_compressed`` cannot set the level; level 1 costs a fraction of level 6's
    CPU time, which collection workers need for emulation.
    """
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as zf:
        for name in (*_ARRAYS, "lives"):
            zip_write(zf, f"{name}.npy", npy_bytes(getattr(ep, name)), compresslevel)
        zip_write(zf, "meta.json", json.dumps(ep.meta).encode(), compresslevel)
    tmp.replace(path)


def load_episode(path: Path) -> Episode:
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            arrays = {n: np.lib.format.read_array(io.BytesIO(zf.read(f"{n}.npy")), allow_pickle=False) for n in _ARRAYS}
            if "lives.npy" in zf.namelist():  # episodes written before lives were stored have none
                arrays["lives"] = np.lib.format.read_array(io.BytesIO(zf.read("lives.npy")), allow_pickle=False)
            meta = json.loads(zf.read("meta.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as err:
        raise CorruptInputError(f"corrupt or unreadable episode file {path}: {err}") from err
    return Episode(meta=meta, **arrays)
