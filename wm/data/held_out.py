"""The held-out set a training stage scores itself on: whole clips of the val split, unshuffled,
in batches of a size the stage fixes (not its training batch size), optionally a number of
those batches spread evenly from the first to the last. The same clips whatever the run's
batch size or seed, so figures from different runs compare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wm.data.shards import count_clips, make_clip_loader


def held_out_batches(shard_dir: str | Path, clip_len: int, batch_size: int, limit: int = 0,
                     split: str = "val") -> list[dict[str, torch.Tensor]]:
    """Every whole ``clip_len``-frame clip of ``split`` in batches of ``batch_size`` (the last
    partial batch dropped; a split under one batch scores in one smaller batch); with ``limit``
    > 0, that many of those batches spread evenly over the split."""
    clips = count_clips(shard_dir, split, clip_len)
    loader = make_clip_loader(shard_dir, split, clip_len, max(1, min(batch_size, clips)), shuffle=False,
                              infinite=False)
    batches = list(loader)
    if 0 < limit < len(batches):
        batches = [batches[i] for i in np.linspace(0, len(batches) - 1, limit).round().astype(int)]
    return batches
