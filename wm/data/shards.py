"""WebDataset shards of episode chunks: writer, manifest, verified reader, clip loader.

On disk (``shard.out_dir``)::

    manifest.json             counts, per-episode return/length, sha256 + chunk lengths per shard,
                              env, policy, seed, code version
    train/train-000000.tar    WebDataset tar shards; one sample = one chunk of one episode
    val/val-000000.tar        held-out episodes (the split is by episode, never within one)

A sample (key ``ep000012_c0003``) holds ``frames.npz`` (T, H, W, 3) uint8 (lossless, deflate),
``actions.npy`` (T,) int64 (-1 = no action), ``buttons.npy`` (T, n_buttons) uint8,
``rewards.npy`` (T,) float32, ``terminals.npy`` (T,) bool, ``continues.npy`` (T,) float32
(0 where the step lost a life or ended the game; from the whole episode, so exact at chunk
starts) and ``meta.json``. Any WebDataset
reader can open them (``wds.WebDataset(url).decode()``); ``ClipDataset`` below is ours:
it verifies hashes, names the file on any corruption, cuts fixed-length clips, shuffles,
and splits samples across DDP ranks and DataLoader workers.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from wm.atomic import write_json_atomic
from wm.data.episodes import Episode, load_episode, npy_bytes, zip_write
from wm.errors import ConfigValueError, UserError
from wm.provenance import code_version

MANIFEST = "manifest.json"
SPLITS = ("train", "val")
EXTRA_OFFSET = 1_000_000  # episode ids of the j-th extra episode set start at (j + 1) * EXTRA_OFFSET


class ShardError(UserError, RuntimeError):
    """A shard is missing, truncated, corrupt or does not match its manifest."""


# ---------------------------------------------------------------- writing


def _npz(arrays: dict[str, np.ndarray], level: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for name, arr in arrays.items():
            zip_write(zf, f"{name}.npy", npy_bytes(arr), level)
    return buf.getvalue()


def chunk_bounds(length: int, chunk_len: int) -> list[tuple[int, int]]:
    """Split ``length`` steps into chunks of ``chunk_len``; the last one is end-aligned
    (overlapping its neighbour) so every chunk is full length when the episode allows."""
    if length <= chunk_len:
        return [(0, length)]
    starts = list(range(0, length - chunk_len + 1, chunk_len))
    if starts[-1] + chunk_len < length:
        starts.append(length - chunk_len)
    return [(s, s + chunk_len) for s in starts]


def episode_samples(ep: Episode, index: int, chunk_len: int, level: int) -> Iterator[dict[str, Any]]:
    cont = ep.continues()
    for c, (s, e) in enumerate(chunk_bounds(len(ep), chunk_len)):
        meta = {k: v for k, v in ep.meta.items() if isinstance(v, (str, int, float, bool, type(None), list))}
        meta.update(episode=index, chunk=c, start=s, length=e - s)
        yield {
            "__key__": f"ep{index:06d}_c{c:04d}",
            "frames.npz": _npz({"frames": ep.frames[s:e]}, level),
            "actions.npy": npy_bytes(ep.actions[s:e].astype(np.int64)),
            "buttons.npy": npy_bytes(ep.buttons[s:e].astype(np.uint8)),
            "rewards.npy": npy_bytes(ep.rewards[s:e].astype(np.float32)),
            "terminals.npy": npy_bytes(ep.terminals[s:e].astype(bool)),
            "continues.npy": npy_bytes(cont[s:e]),
            "meta.json": json.dumps(meta).encode(),
        }


def write_tar(path: Path, samples: Sequence[dict[str, Any]]) -> None:
    """One WebDataset tar written by webdataset's ``TarWriter`` (each sample's files under its
    key), with fixed mtimes, owner and mode so the same samples give byte-identical shards
    (reproducible hashes, so DVC sees an unchanged shard as unchanged)."""
    import webdataset as wds

    with open(path, "wb") as f, wds.TarWriter(f, encoder=False, mtime=0, user="", group="", mode=0o644,
                                              format=tarfile.USTAR_FORMAT) as sink:
        for sample in samples:
            sink.write(sample)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split_episodes(indices: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split by episode: (train, val). With ``val_fraction > 0`` both sides get at
    least one episode (so at least two are needed); ``val_fraction == 0`` keeps all in train."""
    indices = sorted(indices)
    if not 0 <= val_fraction < 1:
        raise ConfigValueError(f"shard.val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return indices, []
    if len(indices) < 2:
        raise ConfigValueError(f"need at least 2 episodes for a train/val split, got {len(indices)}; collect more")
    n_val = min(len(indices) - 1, max(1, round(val_fraction * len(indices))))
    perm = np.random.default_rng(seed).permutation(len(indices))
    val = {indices[i] for i in perm[:n_val]}
    return [i for i in indices if i not in val], sorted(val)


def write_split(
    out_dir: Path,
    split: str,
    samples: list[dict[str, Any]],
    chunks_per_shard: int,
) -> list[dict[str, Any]]:
    """Write ``samples`` as ``split-%06d.tar`` shards; return their manifest entries."""
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(0, len(samples), chunks_per_shard):
        group = samples[i : i + chunks_per_shard]
        rel = f"{split}/{split}-{i // chunks_per_shard:06d}.tar"
        write_tar(out_dir / rel, group)
        lengths = [json.loads(s["meta.json"])["length"] for s in group]
        entries.append({"file": rel, "sha256": sha256_file(out_dir / rel), "chunks": len(group),
                        "chunk_lengths": lengths, "frames": int(sum(lengths))})
    return entries


# ---------------------------------------------------------------- reading


def split_by_set(indices: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split each episode set on its own (set = id // EXTRA_OFFSET), so adding a set never moves
    an earlier episode between train and val; a set of one episode goes to train."""
    train: list[int] = []
    val: list[int] = []
    for group in sorted({i // EXTRA_OFFSET for i in indices}):
        members = [i for i in indices if i // EXTRA_OFFSET == group]
        if group > 0 and len(members) < 2:
            train += members
            continue
        t, v = split_episodes(members, val_fraction, seed + group)
        train += t
        val += v
    return train, val


def build_shards(
    episodes: list[tuple[int, Path]],
    out_dir: Path,
    *,
    chunk_len: int,
    chunks_per_shard: int,
    val_fraction: float,
    seed: int,
    compress_level: int,
    header: dict[str, Any],
) -> dict[str, Any]:
    """Write train/val shards for ``episodes`` (index, npz path) into ``out_dir``; return the manifest."""
    train, val = split_by_set([i for i, _ in episodes], val_fraction, seed)
    files = dict(episodes)
    manifest: dict[str, Any] = {**header, "chunk_len": chunk_len, "splits": {}, "code_version": code_version()}
    for split, indices in (("train", train), ("val", val)):
        samples, infos = [], []
        for index in tqdm(indices, desc=f"shard {split}", unit="episode", dynamic_ncols=True):
            ep = load_episode(files[index])
            samples.extend(episode_samples(ep, index, chunk_len, compress_level))
            infos.append({"episode": index, "length": len(ep), "ret": ep.ret,
                          "action_free": bool(ep.meta.get("action_free", False))})
        # Seeded shuffle (val too): an unshuffled read of the first val batches is then a
        # spread over episodes and game phases, not the opening seconds of one episode.
        order = np.random.default_rng([seed, 1 if split == "train" else 2]).permutation(len(samples))
        samples = [samples[i] for i in order]
        shards = write_split(out_dir, split, samples, chunks_per_shard)
        manifest["splits"][split] = {
            "episodes": infos,
            "n_episodes": len(infos),
            "frames": int(sum(i["length"] for i in infos)),
            "chunks": len(samples),
            "mean_return": float(np.mean([i["ret"] for i in infos])) if infos else None,
            "shards": shards,
        }
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


VIDEO_LATENTS = "videos"  # cache_latents encodes the video shards into <latents.out_dir>/videos


def video_latents_dir(cfg: Any) -> Path:
    return Path(cfg.latents.out_dir) / VIDEO_LATENTS


def split_frames(shard_dir: str | Path, split: str) -> int:
    """Frames in a split of a shard set; 0 when the set is empty or absent."""
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        return 0
    return int(read_manifest(shard_dir)["splits"].get(split, {}).get("frames", 0))


def has_clips(shard_dir: str | Path, split: str, clip_len: int) -> bool:
    """Whether a split holds at least one chunk as long as ``clip_len`` (False when absent)."""
    if not (Path(shard_dir) / MANIFEST).exists():
        return False
    entries = read_manifest(shard_dir)["splits"].get(split, {}).get("shards", [])
    return any(n >= clip_len for e in entries for n in e["chunk_lengths"])


def mixed_batches(primary: Iterator[dict[str, Any]], secondary: Iterator[dict[str, Any]], share: float,
                  seed: int, skip: int = 0) -> Iterator[dict[str, Any]]:
    """Each batch from ``secondary`` with probability ``share`` (a fixed draw per step, so a
    resumed run from step ``skip`` gets the batches the uninterrupted one would), else from
    ``primary``. The iterators start at step 0; the draws before ``skip`` advance them."""
    for step in itertools.count():
        pick = np.random.default_rng([seed, step, 53]).random() < share
        batch = next(secondary if pick else primary)
        if step >= skip:
            yield batch


def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        raise ShardError(f"no {MANIFEST} in {shard_dir}: run `wm shard` (or `dvc repro shard`) first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ShardError(f"{path} is not valid JSON ({err}); re-run `wm shard`") from err


def shard_paths(shard_dir: str | Path, split: str, verify: bool = True) -> list[Path]:
    """The split's shard files, checked against the manifest (existence, and sha256 when
    ``verify``), so corruption is reported up front with the file's name."""
    if split not in SPLITS:
        raise ConfigValueError(f"unknown split '{split}'; use one of {SPLITS}")
    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    entries = manifest["splits"][split]["shards"]
    paths = []
    for entry in entries:
        path = shard_dir / entry["file"]
        if not path.exists():
            raise ShardError(f"shard {path} listed in the manifest is missing; re-run `wm shard` or `dvc pull`")
        if verify and sha256_file(path) != entry["sha256"]:
            raise ShardError(f"shard {path} is corrupt (sha256 differs from the manifest); re-run `wm shard` or `dvc pull`")
        paths.append(path)
    if not paths:
        raise ShardError(f"split '{split}' of {shard_dir} has no shards")
    return paths


def _decode(key: str, files: dict[str, bytes], path: Path) -> dict[str, Any]:
    """A sample's arrays: ``frames`` (frame shards) or ``latents`` (latent shards), plus
    actions, buttons, rewards, terminals and meta."""
    try:
        out: dict[str, Any] = {"__key__": key, "meta": json.loads(files["meta.json"])}
        if "frames.npz" in files:
            with zipfile.ZipFile(io.BytesIO(files["frames.npz"])) as zf:
                out["frames"] = np.lib.format.read_array(io.BytesIO(zf.read("frames.npy")), allow_pickle=False)
        for name in ("latents", "actions", "buttons", "rewards", "terminals", "continues"):
            if f"{name}.npy" in files:
                out[name] = np.lib.format.read_array(io.BytesIO(files[f"{name}.npy"]), allow_pickle=False)
        if "frames" not in out and "latents" not in out:
            raise KeyError("frames.npz or latents.npy")
        for name in ("actions", "rewards", "terminals"):
            if name not in out:
                raise KeyError(f"{name}.npy")
        if "continues" not in out:  # shards written before continuation targets were stored
            out["continues"] = (~out["terminals"].astype(bool)).astype(np.float32)
    except (KeyError, ValueError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise ShardError(f"corrupt sample '{key}' in shard {path}: {err!r}") from err
    return out


def iter_shard(path: str | Path, keep: Any = None, keep_meta: Any = None) -> Iterator[dict[str, Any]]:
    """Decoded samples of one shard, in order. ``keep(i)`` selects by position in the shard and
    ``keep_meta(meta)`` by the sample's meta.json (e.g. its episode), read before anything else
    of it: samples either leaves out cost only their read, not their decoding. Truncation or
    corruption raises ShardError."""
    for _, sample in iter_shard_positions(path, keep, keep_meta):
        yield sample


def iter_shard_positions(path: str | Path, keep: Any = None,
                         keep_meta: Any = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``iter_shard`` with each sample's position in the shard: ``(position, sample)``.

    Reading and grouping files into samples is webdataset's (``tar_file_iterator``,
    ``group_by_keys``); the decoding is ours, so that a bad sample names its shard and key and
    the filters let a resumed epoch, or a stream of a few labelled episodes, skip samples
    without decoding them."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    path = Path(path)
    try:
        with open(path, "rb") as f:
            files = ({**item, "__url__": str(path)} for item in tar_file_iterator(f))
            for position, group in enumerate(group_by_keys(files)):
                if keep is not None and not keep(position):
                    continue
                key = group.pop("__key__")
                if keep_meta is not None:
                    try:
                        meta = json.loads(group["meta.json"])
                    except (KeyError, ValueError) as err:
                        raise ShardError(f"corrupt sample '{key}' in shard {path}: {err!r}") from err
                    if not keep_meta(meta):
                        continue
                yield position, _decode(key, {k: v for k, v in group.items() if not k.startswith("__")}, path)
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise ShardError(f"shard {path} is truncated or corrupt: {err}") from err


def _clip_offsets(length: int, clip_len: int, rng: np.random.Generator | None) -> list[int]:
    """Non-overlapping clip starts covering as much of a chunk as whole clips can."""
    n = length // clip_len
    if n == 0:
        return []
    slack = length - n * clip_len
    base = int(rng.integers(slack + 1)) if rng is not None else 0
    return [base + k * clip_len for k in range(n)]


@dataclass(frozen=True)
class EpisodeLabels:
    """Which episodes keep their actions: the others are treated as action-free video
    (``action_free`` is set, so the dynamics sees its "no action" embedding and no action or
    reward target reaches a loss). ``drop`` leaves them out; ``video_only`` reads only them
    (the action-free stream that the dynamics mixes with the labelled one at a fixed share)."""

    labeled: frozenset[int]
    drop: bool = False
    video_only: bool = False

    def keep(self, episode: int) -> bool:
        if self.video_only:
            return episode not in self.labeled
        return not self.drop or episode in self.labeled

    def action_free(self, episode: int) -> bool:
        return episode not in self.labeled


def episode_labels(shard_dir: str | Path, split: str, frac: float, seed: int, drop: bool) -> EpisodeLabels | None:
    """A seeded ``frac`` of the split's episodes (at least one) keeps its actions; None when
    ``frac >= 1`` (every episode labelled, nothing changes)."""
    if frac >= 1:
        return None
    if not 0 < frac < 1:
        raise ConfigValueError(f"labeled_frac must be in (0, 1], got {frac}")
    episodes = sorted(int(e["episode"]) for e in read_manifest(shard_dir)["splits"][split]["episodes"])
    order = np.random.default_rng([seed, 17]).permutation(len(episodes))
    n = max(1, round(frac * len(episodes)))
    return EpisodeLabels(frozenset(episodes[i] for i in order[:n]), drop)


class ClipDataset(IterableDataset):
    """Fixed-length clips from shards, split across DDP ranks and DataLoader workers.

    Samples (chunks) are dealt round-robin to ranks, then to each rank's DataLoader workers,
    in a per-epoch order that every reader computes identically from the seed, so readers
    never overlap and together cover the data. ``shards`` pairs each file with its sample count
    (from the manifest). Each item: ``key`` ("<sample key>@<offset>"), ``frames`` (T, 3, H, W) uint8
    (frame shards) or ``latents`` (T, L, dz) float32 (latent shards), ``actions`` (T,) int64,
    ``rewards`` (T,) float32, ``terminals`` (T,) bool, ``continues`` (T,) float32, ``action_free`` bool.
    """

    def __init__(
        self,
        shards: Sequence[tuple[str | Path, int]],
        clip_len: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epochs: int | None = 1,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 64,
        labels: EpisodeLabels | None = None,
    ):
        super().__init__()
        if not shards:
            raise ValueError("ClipDataset needs at least one shard")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.shards = [(Path(p), int(n)) for p, n in shards]
        self.clip_len = clip_len
        self.shuffle = shuffle
        self.seed = seed
        self.epochs = epochs
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.labels = labels
        self._cache: dict[int, list[tuple[int, dict[str, Any]]]] = {}  # latent shards, read once

    def _owns(self, position: int, worker: int, workers: int) -> bool:
        """Sample ``position`` goes to rank ``position % world_size``, then to a DataLoader
        worker of that rank by its rank-local index, so a rank's data is the same whatever
        its number of workers."""
        return position % self.world_size == self.rank and (position // self.world_size) % workers == worker

    def _shard_samples(self, index: int, first: int, worker: int,
                       workers: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """(position in the shard, decoded sample) for the samples of shard ``index`` that this
        reader owns (the shard's first sample at ``first`` in the epoch's sequence) and ``labels``
        keeps; the others are not decoded. A single reader (one rank, no DataLoader workers) keeps
        a latent shard it has read to the end in memory (latent samples are small and stored
        uncompressed), and later epochs -- and a resumed run's replay of the batches before its
        checkpoint -- draw from there: the same samples in the same order, without reading and
        parsing the file again. Frame samples are read from the file every time."""
        cached = self._cache.get(index)
        if cached is not None:  # a single reader's: it owns every sample
            yield from cached
            return
        single = self.world_size == 1 and workers == 1
        keep_meta = None if self.labels is None else (lambda meta: self.labels.keep(int(meta.get("episode", -1))))
        owns = None if single else (lambda i: self._owns(first + i, worker, workers))
        kept: list[tuple[int, dict[str, Any]]] | None = [] if single else None
        for at, sample in iter_shard_positions(self.shards[index][0], keep=owns, keep_meta=keep_meta):
            if kept is not None:
                if "latents" in sample:
                    kept.append((at, sample))
                else:
                    kept = None
            yield at, sample
        if kept is not None:
            self._cache[index] = kept

    def _clips(self, epoch: int, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        order = list(range(len(self.shards)))
        if self.shuffle:
            np.random.default_rng([self.seed, epoch]).shuffle(order)  # same order in every reader
        slot = self.rank * workers + worker
        offsets_rng = np.random.default_rng([self.seed, epoch, slot]) if self.shuffle else None
        position = 0  # of the shard's first sample in this epoch's global sequence
        for index in order:
            count = self.shards[index][1]
            for _, sample in self._shard_samples(index, position, worker, workers):
                episode = int(sample["meta"].get("episode", -1))
                action_free = bool(sample["meta"].get("action_free", False)) or (
                    self.labels is not None and self.labels.action_free(episode))
                length = len(sample["actions"])
                for off in _clip_offsets(length, self.clip_len, offsets_rng):
                    sl = slice(off, off + self.clip_len)
                    item = {"key": f"{sample['__key__']}@{off}"}
                    if "frames" in sample:  # (T, H, W, 3) -> (T, 3, H, W) uint8
                        item["frames"] = torch.from_numpy(np.ascontiguousarray(sample["frames"][sl].transpose(0, 3, 1, 2)))
                    if "latents" in sample:  # (T, L, dz), stored as float16
                        item["latents"] = torch.from_numpy(sample["latents"][sl].astype(np.float32))
                    yield {
                        **item,
                        "actions": torch.from_numpy(sample["actions"][sl].astype(np.int64)),
                        "rewards": torch.from_numpy(sample["rewards"][sl].astype(np.float32)),
                        "terminals": torch.from_numpy(sample["terminals"][sl].astype(bool)),
                        "continues": torch.from_numpy(sample["continues"][sl].astype(np.float32)),
                        "action_free": action_free,
                    }
            position += count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        epochs = itertools.count() if self.epochs is None else range(self.epochs)
        rng = np.random.default_rng([self.seed, 1_000_003, self.rank * workers + worker])
        buffer: list[dict[str, Any]] = []
        for epoch in epochs:
            for clip in self._clips(epoch, worker, workers):
                if not self.shuffle or self.shuffle_buffer <= 1:
                    yield clip
                elif len(buffer) < self.shuffle_buffer:
                    buffer.append(clip)
                else:
                    i = int(rng.integers(len(buffer)))
                    buffer[i], clip = clip, buffer[i]
                    yield clip
        order = rng.permutation(len(buffer))
        yield from (buffer[i] for i in order)


@dataclass
class ClipLoader:
    """Batches of clips ``(B, T, C, H, W)``; with ``batches`` set, exactly that many per rank
    (so DDP ranks never wait on each other at an epoch's end)."""

    loader: DataLoader
    batches: int | None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        it = iter(self.loader)
        return it if self.batches is None else itertools.islice(it, self.batches)

    def __len__(self) -> int:
        if self.batches is None:
            raise TypeError("an infinite ClipLoader has no length")
        return self.batches


def count_clips(shard_dir: str | Path, split: str, clip_len: int) -> int:
    """Whole non-overlapping clips of ``clip_len`` frames in the split's chunks (the manifest's count)."""
    entries = read_manifest(shard_dir)["splits"][split]["shards"]
    return sum(n // clip_len for e in entries for n in e["chunk_lengths"])


def make_clip_loader(
    shard_dir: str | Path,
    split: str,
    clip_len: int,
    batch_size: int,
    *,
    num_workers: int = 0,
    shuffle: bool = True,
    seed: int = 0,
    infinite: bool = False,
    rank: int = 0,
    world_size: int = 1,
    shuffle_buffer: int = 64,
    verify: bool = True,
    labels: EpisodeLabels | None = None,
) -> ClipLoader:
    """A loader over one split. Finite loaders yield ``clips // (world_size * batch_size)``
    batches on every rank (computed from the manifest); infinite ones never stop."""
    paths = shard_paths(shard_dir, split, verify=verify)
    entries = read_manifest(shard_dir)["splits"][split]["shards"]
    total_clips = count_clips(shard_dir, split, clip_len)
    if total_clips == 0:
        raise ConfigValueError(f"no {split} chunk in {shard_dir} is as long as clip_len={clip_len}")
    batches = None if infinite else total_clips // (world_size * batch_size)
    if batches == 0:
        raise ConfigValueError(
            f"{split} split has {total_clips} clips of length {clip_len}: too few for "
            f"{world_size} rank(s) x batch {batch_size}"
        )
    # Ranks/workers hold disjoint samples, so a finite loader's ranks can differ by a few
    # clips; cycling epochs and cutting at ``batches`` keeps every rank's count identical.
    ds = ClipDataset([(p, e["chunks"]) for p, e in zip(paths, entries)], clip_len, shuffle=shuffle, seed=seed,
                     epochs=None, rank=rank, world_size=world_size, shuffle_buffer=shuffle_buffer, labels=labels)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, drop_last=True,
                        pin_memory=torch.cuda.is_available(), persistent_workers=False)
    return ClipLoader(loader, batches)


def train_batches(shard_dir: str | Path, train: Any, info: Any, shuffle_buffer: int, skip: int = 0,
                  clip_len: int | None = None, batch_size: int | None = None,
                  labels: EpisodeLabels | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """The infinite, shuffled training batches of one rank for a stage's ``TrainConfig``
    (``clip_len``/``batch_size`` override it), starting ``skip`` batches in, so a resumed run
    sees exactly the batches the uninterrupted one would."""
    loader = make_clip_loader(shard_dir, "train", clip_len or train.clip_len, batch_size or train.batch_size,
                              num_workers=train.num_workers, seed=train.seed, infinite=True, rank=info.rank,
                              world_size=info.world_size, shuffle_buffer=shuffle_buffer, labels=labels)
    it = iter(loader)
    for _ in range(skip):
        next(it)
    return it
