"""Process groups and model wrapping: DDP or FSDP2 behind one flag (``train.distributed``).

Launch with ``torchrun --nproc_per_node N -m wm.cli train-tokenizer tokenizer.train.distributed=ddp``.
Backend: nccl on CUDA, gloo on CPU. Without torchrun's environment the run is single-process
whatever the flag says, so the same command works on a laptop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from wm.errors import ConfigValueError

MODES = ("none", "ddp", "fsdp")
DEVICE_ENV = "WM_DEVICE"


def compute_device(local_rank: int = 0) -> torch.device:
    """The one place a process picks where it computes: ``$WM_DEVICE`` when set (``cpu`` keeps a
    GPU machine's run on the CPU, ``cuda:1`` picks a card), else this rank's GPU when CUDA is
    available, else the CPU. Every stage asks here (training, latents, imagination RL, evaluation,
    the bench) and places its models, data and random generators on the answer."""
    name = os.environ.get(DEVICE_ENV, "").strip()
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as e:
            raise ConfigValueError(f"${DEVICE_ENV}={name!r} is not a torch device (e.g. cpu, cuda, cuda:1): {e}") from e
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigValueError(f"${DEVICE_ENV}={name!r} but CUDA is not available here; unset it or use cpu")
        return device
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mode: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(mode: str) -> DistInfo:
    if mode not in MODES:
        raise ConfigValueError(f"train.distributed must be one of {MODES}, got '{mode}'")
    if mode == "none" or "WORLD_SIZE" not in os.environ:
        return DistInfo(device=compute_device())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = compute_device(local)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device, mode=mode)


def wrap_model(model: nn.Module, info: DistInfo, shard_types: tuple[type[nn.Module], ...] = ()) -> nn.Module:
    """DDP, or FSDP2 (``fully_shard`` on each block of ``shard_types``, then the root)."""
    if not info.enabled or info.mode == "none":
        return model
    if info.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for module in model.modules():
        if shard_types and isinstance(module, shard_types):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def all_true(flag: bool, info: DistInfo) -> bool:
    """True on every rank iff ``flag`` is True on every rank."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
