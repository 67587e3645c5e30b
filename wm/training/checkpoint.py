"""Atomic, safely loadable checkpoints.

A checkpoint is one ``torch.save`` file holding only tensors and plain containers
(model, optimizer, scheduler, loss-state, step, RNG, data position), written to a temp
file and renamed, so a crash mid-write leaves the previous checkpoint intact. Loading uses
``weights_only=True`` (no pickled code runs). The resolved config is written beside it.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import torch
import yaml

from wm.atomic import write_bytes_atomic
from wm.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, corrupt, or does not fit the model."""


def save_checkpoint(path: str | Path, state: dict[str, Any], config: dict[str, Any] | None = None) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(path, buf.getvalue())
    if config is not None:
        write_bytes_atomic(Path(path).parent / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; train it first (or `dvc pull`)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/garbled files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err}); "
            "delete it and retrain, or restore it with `dvc checkout`/`dvc pull`"
        ) from err


def weights_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint's model weights alone (names, dtypes, shapes and values, in name
    order): the same for a copy without the optimizer state or written by another run of the same
    training, where the file's own hash differs."""
    import hashlib

    state = load_checkpoint(path).get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no model weights")
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d tensors too
    return digest.hexdigest()


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """``load_state_dict`` with an error that says which checkpoint does not fit."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[:4]
        raise CheckpointError(
            f"checkpoint {path} does not fit this {type(model).__name__} (was it trained with another "
            f"config?): {' '.join(first)}"
        ) from err


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

