"""Wall-clock timing of GPU work: CUDA kernels run asynchronously, so a timer read before the
device has finished measures the launch, not the work. ``synced_clock`` waits for the device."""

from __future__ import annotations

import time

import torch


def synced_clock(device: torch.device | str | None = None) -> float:
    """time.perf_counter() after every queued kernel on ``device`` (CUDA) has finished."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
