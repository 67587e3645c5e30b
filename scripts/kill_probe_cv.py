"""The kill probe cross-validated over every episode, to tell two tokenizers' latents apart.

    python scripts/kill_probe_cv.py A=data/latents B=OTHER/latents [--folds 10] [--seeds 3] --out X.json

finetune_agent's `reward/probe_auc/latents` scores one held-out split (14 episodes, ~76 kills): two
tokenizers closer than ~0.03 AUC cannot be told apart by it (scripts/kill_probe_spread.py). Here
the same probe (an MLP on the latents of a frame and the one before, `wm.probes.probe_scores`)
is fitted K times, each time on all episodes but one fold of them (train and val splits pooled),
and scores the episodes it did not see: every kill of the data is scored once per probe seed.
Folders must hold latents of the same shards (the rows are checked to match), so the comparison
is paired: the difference of AUCs with a 95 % interval from resampling whole episodes.

One tokenizer seed is one draw: the MSE-only controls of three configurations scored 0.907, 0.895
and 0.905 (sessions 24/26/28). With two ``--group NAME=A,B,C`` options (folder names, e.g. three
seeds each), the second group's mean AUC minus the first's is reported twice: over episode
resamples (the probe's data) and over the tokenizer seeds (Welch's 95 % interval, the training's;
for arms of equal size, also seed by seed in the order given: the paired t interval).

    python scripts/kill_probe_cv.py d0=... d1=... m0=... m1=... --group default=d0,d1 --group mse_only=m0,m1

``--cache DIR`` keeps each folder's scores: fill it from separate processes over disjoint folders
(one core each), then run over all of them to compare.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wm.atomic import write_bytes_atomic, write_json_atomic  # noqa: E402
from wm.config import load  # noqa: E402
from wm.data.shards import make_clip_loader  # noqa: E402
from wm.probes import probe_scores, roc_auc  # noqa: E402
from wm.stats import cluster_resamples  # noqa: E402
from wm.training.heads import kill_pairs  # noqa: E402


def all_rows(latents: str, clip_len: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, list[str]]:
    """Every transition of every clip of both splits, in a fixed order: latents (N, 2, L, dz),
    kill (N,), the episode of each row ("split/epNNN") and the clip keys (to check two folders match)."""
    xs, ys, eps, keys = [], [], [], []
    for split in ("train", "val"):
        for b in make_clip_loader(latents, split, clip_len, 16, shuffle=False):
            x, y = kill_pairs(b["latents"].float(), b["rewards"])
            xs.append(x)
            ys.append(y)
            per_clip = x.shape[0] // len(b["key"])
            for key in b["key"]:
                eps += [f"{split}/{key.split('_')[0]}"] * per_clip
            keys += [f"{split}/{k}" for k in b["key"]]
    return torch.cat(xs), torch.cat(ys), np.array(eps), keys


def fold_of(episodes: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Each row's fold: whole episodes, dealt to ``folds`` folds in a seeded order."""
    names = np.array(sorted(set(episodes)))
    order = np.random.default_rng(seed).permutation(len(names))
    fold = {names[i]: j % folds for j, i in enumerate(order)}
    return np.array([fold[e] for e in episodes])


def out_of_fold(x: torch.Tensor, y: torch.Tensor, fold: np.ndarray, steps: int, seed: int) -> np.ndarray:
    """Probe scores of every row from a probe that never saw its episode."""
    scores = np.zeros(len(y))
    flat = x.flatten(1)
    for k in sorted(set(fold)):
        held = torch.from_numpy(fold == k)
        s = probe_scores(flat[~held], y[~held], flat[held], steps=steps, seed=seed)
        scores[held.numpy()] = np.asarray(s)
    return scores


def resampled_aucs(scores: dict[str, np.ndarray], y: np.ndarray, episodes: np.ndarray, boots: int, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """Each folder's AUC on the same ``boots`` resamples of whole episodes (kills within an episode
    are not independent); differences between folders taken per resample are paired."""
    out: dict[str, list[float]] = {k: [] for k in scores}
    for idx in cluster_resamples(episodes, boots, seed):
        for k, s in scores.items():
            out[k].append(roc_auc(s[idx], y[idx]))
    return {k: np.array(v) for k, v in out.items()}


def group_difference(groups: dict[str, list[str]], aucs: dict[str, float], boot: dict[str, np.ndarray]) -> dict:
    """The second group's mean AUC minus the first's: over episode resamples (``boot``, each
    folder's AUC per resample), over the groups' members as independent draws (Welch's t) and,
    for groups of equal size, as pairs in the order given (same seed: same init and data order;
    paired t)."""
    from scipy import stats

    if len(groups) != 2:
        raise SystemExit(f"--group: give exactly two groups to compare, got {len(groups)}")
    (a, ma), (b, mb) = groups.items()
    va, vb = [aucs[m] for m in ma], [aucs[m] for m in mb]
    diff = statistics.fmean(vb) - statistics.fmean(va)
    per_boot = np.mean([boot[m] for m in mb], 0) - np.mean([boot[m] for m in ma], 0)
    out = {
        "groups": groups,
        f"{a}_auc": va, f"{b}_auc": vb,
        f"{a}_mean": statistics.fmean(va), f"{b}_mean": statistics.fmean(vb),
        f"{a}_sd": statistics.stdev(va) if len(va) > 1 else None,
        f"{b}_sd": statistics.stdev(vb) if len(vb) > 1 else None,
        f"diff_{b}_minus_{a}": diff,
        "diff_episodes_bootstrap95": [float(np.percentile(per_boot, 2.5)), float(np.percentile(per_boot, 97.5))],
        "diff_seeds_welch95": None,
    }
    if len(va) > 1 and len(vb) > 1 and (statistics.stdev(va) > 0 or statistics.stdev(vb) > 0):
        ci = stats.ttest_ind(vb, va, equal_var=False).confidence_interval(0.95)
        out["diff_seeds_welch95"] = [float(ci.low), float(ci.high)]
    if len(va) == len(vb) > 1:  # members listed in the same seed order: seed i of one arm beside seed i of the other
        pairs = [y - x for x, y in zip(va, vb)]
        out["diff_by_seed_pair"] = pairs
        out["seed_pairs_favouring_" + b] = sum(d > 0 for d in pairs)
        out["diff_seed_pairs_t95"] = None
        if statistics.stdev(pairs) > 0:
            ci = stats.ttest_rel(vb, va).confidence_interval(0.95)
            out["diff_seed_pairs_t95"] = [float(ci.low), float(ci.high)]
    return out


def cached_scores(cache: Path | None, folder: str, setup: tuple, compute) -> list[np.ndarray]:
    """``compute()``'s out-of-fold scores of one folder, kept in ``cache`` (a folder) under the
    latent folder's resolved path and the CV setup: processes run on disjoint folders can fill the
    cache side by side, and a last run over all of them only compares."""
    if cache is None:
        return compute()
    files = sorted((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns)
                   for f in Path(folder).rglob("*") if f.is_file())  # recached latents: new scores
    tag = hashlib.sha1(repr((str(Path(folder).resolve()), files, setup)).encode()).hexdigest()[:16]
    path = cache / f"{tag}.npy"
    if path.exists():
        return list(np.load(path))
    scores = compute()
    buf = io.BytesIO()
    np.save(buf, np.stack(scores))
    write_bytes_atomic(path, buf.getvalue())
    return scores


def compare(folders: dict[str, str], params: str = "params.yaml", folds: int = 10, seeds: int = 3,
            boots: int = 1000, groups: dict[str, list[str]] | None = None, cache: Path | None = None) -> dict:
    cfg = load(params)
    a, clip_len = cfg.agent, cfg.rl.context + cfg.rl.horizon
    rows = {name: all_rows(path, clip_len) for name, path in folders.items()}
    first = next(iter(rows))
    _, y, episodes, keys = rows[first]
    for name, (_, y2, _, keys2) in rows.items():
        if keys2 != keys or not torch.equal(y2, y):
            raise SystemExit(f"{folders[name]} does not hold latents of the same clips as {folders[first]}: "
                             "compare folders cached from the same shards")
    fold = fold_of(episodes, folds)
    yn = y.numpy()
    out: dict = {"rows": int(len(yn)), "kills": int(yn.sum()), "episodes": len(set(episodes)), "folds": folds,
                 "probe_steps": a.probe_steps, "probe_seeds": seeds, "folders": folders}
    mean_scores = {}
    for name, (x, _, _, _) in rows.items():
        per_seed = cached_scores(cache, folders[name], (folds, a.probe_steps, seeds, keys),
                                 lambda: [out_of_fold(x, y, fold, a.probe_steps, seed) for seed in range(seeds)])
        aucs = [roc_auc(s, yn) for s in per_seed]
        mean_scores[name] = np.mean(per_seed, 0)  # the probe-seed ensemble, for the paired interval
        out[name] = {"auc_by_probe_seed": aucs, "auc_mean": statistics.fmean(aucs),
                     "auc_sd": statistics.stdev(aucs) if seeds > 1 else None,
                     "auc_ensemble": roc_auc(mean_scores[name], yn)}
        print(name, json.dumps({k: v for k, v in out[name].items() if k != "auc_by_probe_seed"}), flush=True)
    boot = resampled_aucs(mean_scores, yn, episodes, boots)
    for name, values in boot.items():
        key = "auc_ensemble_bootstrap95" if name == first else f"diff_vs_{first}_bootstrap95"
        values = values if name == first else values - boot[first]
        out[name][key] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
        if name != first:
            out[name][f"diff_vs_{first}"] = out[name]["auc_ensemble"] - out[first]["auc_ensemble"]
    if groups:
        out["group_difference"] = group_difference(groups, {k: out[k]["auc_ensemble"] for k in folders}, boot)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("latents", nargs="+", help="latent folders (wm cache-latents outputs) as NAME=PATH; the first is the reference")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--group", action="append", default=[],
                    help="NAME=A,B,C: folder names pooled as one arm (twice: the second minus the first)")
    ap.add_argument("--cache", type=Path, help="folder keeping each latent folder's probe scores (reused on rerun)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    folders = {}
    for arg in args.latents:
        name, _, path = arg.rpartition("=")
        folders[name or path] = path
    groups = {}
    for arg in args.group:
        name, _, members = arg.partition("=")
        groups[name] = members.split(",")
        if not name or not members or set(groups[name]) - set(folders):
            raise SystemExit(f"--group {arg}: expected NAME=A,B,... naming folders among {sorted(folders)}")
    out = compare(folders, args.params, args.folds, args.seeds, groups=groups or None, cache=args.cache)
    print(json.dumps({k: v for k, v in out.items() if k not in folders}))
    ref, *others = folders
    for name in others:
        print(f"{name} - {ref}: {out[name][f'diff_vs_{ref}']:+.4f} "
              f"(95 % over episodes {out[name][f'diff_vs_{ref}_bootstrap95']})")
    if args.out:
        write_json_atomic(args.out, out)


if __name__ == "__main__":
    main()
