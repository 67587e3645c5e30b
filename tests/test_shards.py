from pathlib import Path

import numpy as np
import pytest
import torch

from wm.data.episodes import Episode, load_episode, save_episode
from wm.data.shards import (
    ClipDataset, ShardError, chunk_bounds, iter_shard, make_clip_loader, read_manifest, shard_paths,
)
from wm.data.shards import build_shards


def synthetic_episodes(tmp: Path, n: int = 5, seed: int = 0) -> list[tuple[int, Path]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = int(rng.integers(20, 90))
        ep = Episode(
            frames=rng.integers(0, 256, (t, 16, 16, 3), dtype=np.uint8),
            actions=rng.integers(0, 10, t),
            buttons=rng.integers(0, 2, (t, 12)).astype(np.uint8),
            rewards=rng.normal(size=t).astype(np.float32),
            terminals=np.arange(t) == t - 1,
            meta={"episode": i},
        )
        path = tmp / f"ep{i:06d}.npz"
        save_episode(ep, path)
        out.append((i, path))
    return out


@pytest.fixture()
def synthetic(tmp_path):
    eps = synthetic_episodes(tmp_path)
    out = tmp_path / "shards"
    build_shards(eps, out, chunk_len=16, chunks_per_shard=3, val_fraction=0.4, seed=0, compress_level=1,
                 header={"kind": "frames"})
    return eps, out


def test_chunk_bounds_cover_episode():
    assert chunk_bounds(10, 16) == [(0, 10)]
    assert chunk_bounds(32, 16) == [(0, 16), (16, 32)]
    assert chunk_bounds(40, 16) == [(0, 16), (16, 32), (24, 40)]  # last one end-aligned


def test_write_read_round_trip_is_exact(synthetic):
    eps, out = synthetic
    manifest = read_manifest(out)
    train = {e["episode"] for e in manifest["splits"]["train"]["episodes"]}
    val = {e["episode"] for e in manifest["splits"]["val"]["episodes"]}
    assert train.isdisjoint(val) and train | val == set(range(5)) and val
    seen: dict[int, np.ndarray] = {}
    for split in ("train", "val"):
        for path in shard_paths(out, split):
            for s in iter_shard(path):
                i, start = s["meta"]["episode"], s["meta"]["start"]
                ep = load_episode(dict(eps)[i])
                sl = slice(start, start + s["meta"]["length"])
                assert np.array_equal(s["frames"], ep.frames[sl])
                assert np.array_equal(s["actions"], ep.actions[sl])
                assert np.array_equal(s["buttons"], ep.buttons[sl])
                assert np.array_equal(s["rewards"], ep.rewards[sl])
                assert np.array_equal(s["terminals"], ep.terminals[sl])
                covered = seen.setdefault(i, np.zeros(len(ep), bool))
                covered[sl] = True
    assert all(c.all() for c in seen.values()) and len(seen) == 5  # every step of every episode stored
    # split totals in the manifest agree with the episodes
    assert manifest["splits"]["val"]["frames"] == sum(len(load_episode(dict(eps)[i])) for i in val)


def test_shards_are_reproducible(tmp_path, monkeypatch):
    """Same episodes, same shards byte for byte -- also when the two builds run at different times
    (the clock is moved a day between them: zip and tar headers must not stamp the time)."""
    import time

    eps = synthetic_episodes(tmp_path)
    real_time = time.time
    hashes, episode_bytes = [], []
    for name, offset in (("a", 0.0), ("b", 86_400.0 + 7.0)):
        monkeypatch.setattr(time, "time", lambda offset=offset: real_time() + offset)
        m = build_shards(eps, tmp_path / name, chunk_len=16, chunks_per_shard=3, val_fraction=0.4, seed=0,
                         compress_level=1, header={})
        hashes.append([s["sha256"] for s in m["splits"]["train"]["shards"]])
        save_episode(load_episode(eps[0][1]), tmp_path / f"{name}.npz")
        episode_bytes.append((tmp_path / f"{name}.npz").read_bytes())
    assert len(hashes[0]) > 0 and hashes[0] == hashes[1]
    assert episode_bytes[0] == episode_bytes[1]


def test_webdataset_library_reads_our_shards(synthetic):
    import webdataset as wds

    _, out = synthetic
    path = shard_paths(out, "train")[0]
    sample = next(iter(wds.WebDataset(str(path), shardshuffle=False).decode()))
    assert sample["actions.npy"].dtype == np.int64
    assert sample["frames.npz"]["frames"].shape[1:] == (16, 16, 3)


def test_clip_loader_shapes(debug_data):
    cfg = debug_data["cfg"]
    loader = make_clip_loader(cfg.shard.out_dir, "train", 8, 4, infinite=True)
    batch = next(iter(loader))
    assert batch["frames"].shape == (4, 8, 3, 64, 64) and batch["frames"].dtype == torch.uint8
    assert batch["actions"].shape == (4, 8) and batch["actions"].dtype == torch.int64
    assert batch["rewards"].shape == (4, 8) and batch["terminals"].dtype == torch.bool
    assert batch["action_free"].shape == (4,)
    assert int(batch["actions"].max()) < len(cfg.env.action_map)
    assert batch["continues"].shape == (4, 8) and batch["continues"].dtype == torch.float32


def test_continuation_targets_reach_the_shards(debug_data):
    """Lives stored per step at collection become continuation targets in the shards: 0 exactly
    where an episode lost a life or ended, computed over the whole episode."""
    cfg = debug_data["cfg"]
    rollouts = sorted(Path(cfg.collect.out_dir).glob("ep*.npz"))
    ep = load_episode(rollouts[0])
    assert ep.lives.min() >= 0 and ep.lives[0] == 3  # Airstriker starts with 3 lives
    expected = ep.continues()
    assert (expected[ep.terminals] == 0).all()
    samples = [s for split in ("train", "val") for p in shard_paths(cfg.shard.out_dir, split) for s in iter_shard(p)]
    mine = sorted((s for s in samples if s["meta"]["episode"] == ep.meta["episode"]), key=lambda s: s["meta"]["start"])
    for s in mine:
        start = s["meta"]["start"]
        assert np.array_equal(s["continues"], expected[start : start + len(s["continues"])])


def _clip_ids(ds) -> list[str]:
    return [c["key"] for c in ds]


def test_ranks_and_workers_read_disjoint_data(synthetic):
    _, out = synthetic
    entries = read_manifest(out)["splits"]["train"]["shards"]
    shards = [(out / e["file"], e["chunks"]) for e in entries]
    full = _clip_ids(ClipDataset(shards, 8, shuffle=False))
    parts = [_clip_ids(ClipDataset(shards, 8, shuffle=False, rank=r, world_size=2)) for r in range(2)]
    assert parts[0] and parts[1]
    assert set(parts[0]).isdisjoint(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(full)
    # DataLoader workers within a rank split it further, still disjoint and complete
    loader = torch.utils.data.DataLoader(ClipDataset(shards, 8, shuffle=False, rank=0, world_size=2),
                                         batch_size=None, num_workers=2)
    assert sorted(_clip_ids(loader)) == sorted(parts[0])
    # shuffling reorders (and re-draws clip offsets) but yields as many clips per epoch
    shuffled = _clip_ids(ClipDataset(shards, 8, shuffle=True, seed=3))
    assert len(shuffled) == len(full) and shuffled != full


def test_equal_batches_per_rank(synthetic):
    _, out = synthetic
    counts = []
    for rank in range(2):
        loader = make_clip_loader(out, "train", 8, 2, rank=rank, world_size=2)
        counts.append(sum(1 for _ in loader))
        assert counts[-1] == len(loader)
    assert counts[0] == counts[1] > 0


def test_truncated_shard_names_file(synthetic):
    _, out = synthetic
    path = shard_paths(out, "train")[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=str(path)):
        shard_paths(out, "train")  # hash check up front
    with pytest.raises(ShardError, match=str(path)):
        list(iter_shard(path))  # and while streaming, without the manifest


def test_corrupt_shard_names_file(synthetic):
    _, out = synthetic
    path = shard_paths(out, "train")[0]
    data = bytearray(path.read_bytes())
    for i in range(700, len(data) - 2048, 97):  # scribble over payloads and headers
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=str(path)):
        list(iter_shard(path))
    with pytest.raises(ShardError, match="corrupt"):
        make_clip_loader(out, "train", 8, 2)


def test_missing_manifest_is_clear(tmp_path):
    with pytest.raises(ShardError, match="run `wm shard`"):
        shard_paths(tmp_path, "train")
