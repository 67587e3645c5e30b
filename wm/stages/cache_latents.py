"""cache_latents: encode the frame shards with the frozen tokenizer into latent shards.

Action-free video shards (stage import_videos) are encoded alike into ``<out_dir>/videos``.
Same layout and keys as the frame shards (``train/``, ``val/``, ``manifest.json`` with
``kind: latents``); each sample holds ``latents.npy`` (T, n_latents, latent_dim) float16
plus the actions, rewards, terminals and metadata of its chunk, so the dynamics model
trains without touching pixels. Chunks of equal length are encoded together, no grad.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wm.atomic import atomic_dir, write_json_atomic
from wm.config import Config
from wm.data.episodes import npy_bytes
from wm.data.shards import (MANIFEST, SPLITS, VIDEO_LATENTS, iter_shard, read_manifest, shard_paths, split_frames,
                            write_split)
from wm.models.tokenizer import Tokenizer
from wm.provenance import code_version
from wm.training.distributed import compute_device
from wm.training.trainer import CHECKPOINT
from wm.world_model import load_tokenizer

METRICS_PATH = Path("data/metrics/cache_latents.json")


@torch.no_grad()
def encode_frames(model: Tokenizer, frames: np.ndarray, device: torch.device) -> np.ndarray:
    """(N, T, H, W, 3) uint8 -> (N, T, L, dz) float16."""
    x = torch.from_numpy(frames).to(device).permute(0, 1, 4, 2, 3).float() / 255.0
    return model.encode(x).float().cpu().numpy().astype(np.float16)


def _latent_sample(sample: dict[str, Any], latents: np.ndarray) -> dict[str, Any]:
    return {
        "__key__": sample["__key__"],
        "latents.npy": npy_bytes(latents),
        "actions.npy": npy_bytes(sample["actions"].astype(np.int64)),
        "rewards.npy": npy_bytes(sample["rewards"].astype(np.float32)),
        "terminals.npy": npy_bytes(sample["terminals"].astype(bool)),
        "continues.npy": npy_bytes(sample["continues"].astype(np.float32)),
        "meta.json": json.dumps(sample["meta"]).encode(),
    }


def encode_set(model: Tokenizer, in_dir: str | Path, out_dir: Path, cfg: Config, device: torch.device,
               tokenizer_path: str) -> int:
    """Encode the frame shards of ``in_dir`` into latent shards (same splits, keys and
    metadata) written to ``out_dir``; the number of frames encoded."""
    c = cfg.latents
    frames_manifest = read_manifest(in_dir)
    n_frames = 0
    manifest: dict[str, Any] = {
        "kind": "latents", "source": str(in_dir), "env": frames_manifest.get("env"),
        "policy": frames_manifest.get("policy"), "seed": frames_manifest.get("seed"),
        "chunk_len": frames_manifest.get("chunk_len"),
        "latent_shape": [model.cfg.n_latents, model.cfg.latent_dim],
        "tokenizer": tokenizer_path, "splits": {},
        "code_version": code_version(),
    }
    if frames_manifest.get("action_free"):
        manifest["action_free"] = True
    for split in SPLITS:
        entries = frames_manifest["splits"][split]["shards"]
        if not entries:
            manifest["splits"][split] = {**frames_manifest["splits"][split], "shards": []}
            continue
        out_samples: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []

        def flush() -> None:
            if pending:
                z = encode_frames(model, np.stack([s["frames"] for s in pending]), device)
                out_samples.extend(_latent_sample(s, zi) for s, zi in zip(pending, z))
                pending.clear()

        total = sum(e["chunks"] for e in entries)
        name = "videos " if frames_manifest.get("action_free") else ""
        with tqdm(total=total, desc=f"encode {name}{split}", unit="chunk", dynamic_ncols=True) as bar:
            for path in shard_paths(in_dir, split):
                for sample in iter_shard(path):
                    if pending and len(sample["frames"]) != len(pending[0]["frames"]):
                        flush()
                    pending.append(sample)
                    n_frames += len(sample["frames"])
                    if len(pending) >= c.batch_chunks:
                        flush()
                    bar.update(1)
            flush()
        shards = write_split(out_dir, split, out_samples, cfg.shard.chunks_per_shard)
        info = {k: v for k, v in frames_manifest["splits"][split].items() if k != "shards"}
        manifest["splits"][split] = {**info, "shards": shards}
    write_json_atomic(out_dir / MANIFEST, manifest)
    return n_frames


def run(cfg: Config) -> dict[str, Any]:
    """Rollout shards -> ``latents.out_dir``; action-free video shards (stage import_videos;
    none is fine) -> ``<latents.out_dir>/videos``."""
    c = cfg.latents
    device = compute_device()
    model, saved = load_tokenizer(cfg.tokenizer.out_dir, device)
    start = time.perf_counter()
    tokenizer_path = str(Path(cfg.tokenizer.out_dir) / CHECKPOINT)
    video_frames = 0
    with atomic_dir(c.out_dir) as tmp:
        n_frames = encode_set(model, c.in_dir, tmp, cfg, device, tokenizer_path)
        videos = cfg.videos.out_dir
        if sum(split_frames(videos, split) for split in SPLITS) > 0:  # without videos, nothing changes here
            (tmp / VIDEO_LATENTS).mkdir()
            video_frames = encode_set(model, cfg.videos.out_dir, tmp / VIDEO_LATENTS, cfg, device, tokenizer_path)
    wall = time.perf_counter() - start
    metrics = {"frames": n_frames, "frames_per_s": (n_frames + video_frames) / max(wall, 1e-9),
               "wall_s": round(wall, 2), "latent_shape": [model.cfg.n_latents, model.cfg.latent_dim]}
    if video_frames:
        metrics["video_frames"] = video_frames
    write_json_atomic(METRICS_PATH, metrics)
    return metrics
