"""shard: rollouts (one .npz per episode) -> WebDataset train/val shards + manifest.

The split is by episode (seeded), so no held-out frame has a training twin a few steps
away. Chunks are written in a seeded shuffled order, so every shard mixes episodes, a
reader that shuffles shards and a small buffer sees well-mixed batches, and a fixed
evaluation set taken from the start of the val split is representative.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from wm.atomic import atomic_dir, write_json_atomic
from wm.config import Config
from wm.data.shards import EXTRA_OFFSET, build_shards
from wm.errors import ConfigValueError, MissingInputError

METRICS_PATH = Path("data/metrics/shard.json")


def read_rollouts(in_dir: Path) -> dict[str, Any]:
    path = in_dir / "manifest.json"
    if not path.exists():
        raise MissingInputError(f"no rollouts in {in_dir} ({path} missing): run `wm collect` first")
    return json.loads(path.read_text())


def extra_sets(extra_dir: str) -> list[Path]:
    """The episode sets retraining added (sub-dirs with a manifest), in name order."""
    if not extra_dir or not Path(extra_dir).is_dir():
        return []
    return sorted(p for p in Path(extra_dir).iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").exists())


def gather_episodes(s: Any) -> tuple[dict[str, Any], list[tuple[int, Path]], list[dict[str, Any]]]:
    """The base rollouts' manifest, every (episode id, file) of the base and extra sets, and
    one summary per set. Ids stay unique: the j-th extra set is offset by (j + 1) * 10^6."""
    in_dir = Path(s.in_dir)
    rollouts = read_rollouts(in_dir)
    episodes = [(e["episode"], in_dir / e["file"]) for e in rollouts["episodes"]]
    sources = [{"dir": str(in_dir), "policy": rollouts["policy"], "episodes": len(rollouts["episodes"])}]
    for j, sub in enumerate(extra_sets(s.extra_dir)):
        extra = read_rollouts(sub)
        if extra["env"] != rollouts["env"]:
            raise ConfigValueError(f"{sub} was collected with another env config than {in_dir}; remove it or re-collect")
        if max((e["episode"] for e in extra["episodes"]), default=0) >= EXTRA_OFFSET:
            raise ConfigValueError(f"{sub} holds more than {EXTRA_OFFSET} episodes")
        episodes += [((j + 1) * EXTRA_OFFSET + e["episode"], sub / e["file"]) for e in extra["episodes"]]
        sources.append({"dir": str(sub), "policy": extra["policy"], "episodes": len(extra["episodes"])})
    return rollouts, episodes, sources


def run(cfg: Config) -> dict[str, Any]:
    s = cfg.shard
    out_dir = Path(s.out_dir)
    rollouts, episodes, sources = gather_episodes(s)
    start = time.perf_counter()
    header = {"kind": "frames", "env": rollouts["env"], "policy": rollouts["policy"], "seed": rollouts["seed"],
              "source": s.in_dir, "sources": sources}
    with atomic_dir(out_dir) as tmp:
        manifest = build_shards(episodes, tmp, chunk_len=s.chunk_len, chunks_per_shard=s.chunks_per_shard,
                                val_fraction=s.val_fraction, seed=rollouts["seed"],
                                compress_level=s.compress_level, header=header)
    sizes = sum(p.stat().st_size for p in out_dir.rglob("*.tar"))
    metrics = {
        "train_episodes": manifest["splits"]["train"]["n_episodes"],
        "val_episodes": manifest["splits"]["val"]["n_episodes"],
        "train_frames": manifest["splits"]["train"]["frames"],
        "val_frames": manifest["splits"]["val"]["frames"],
        "shards": sum(len(v["shards"]) for v in manifest["splits"].values()),
        "bytes": sizes,
        "episode_sets": len(sources),
        "wall_s": round(time.perf_counter() - start, 2),
    }
    write_json_atomic(METRICS_PATH, metrics)
    return metrics
