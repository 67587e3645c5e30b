"""`wm inspect`: versioned datasets and checkpoints from the command line.

    wm inspect versions                     # git revisions that changed dvc.lock, with their metrics
    wm inspect dataset [--rev REV] [--gif]  # episodes, frames, returns, action histogram, a sample clip
    wm inspect checkpoint NAME [--rev REV]  # config, step, parameter count, metrics
    wm inspect diff REV_A [REV_B]           # metrics and manifest differences between two versions
    wm inspect fetch PATH --rev REV --out DIR   # any version's artifact, through DVC
    wm inspect retrain                      # retraining iterations: dataset, gate, promoted or not

Versions are git revisions: dvc.lock pins every artifact's hash, so a revision names a
dataset and its checkpoints exactly; artifacts of other revisions come from the DVC cache or
remote (``dvc.api`` / ``dvc get``), never by checking anything out in the working tree.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from wm.errors import ConfigValueError

# piped or captured output gets wide tables instead of cells cut to fit 80 columns
console = Console(width=None if sys.stdout.isatty() else 160)
METRIC_FILES = ("collect", "shard", "tokenizer", "cache_latents", "dynamics", "agent", "imagine_rl", "evaluate")


def _git(*args: str, cwd: str = ".") -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigValueError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _read_at(path: str, rev: str | None, repo: str = ".") -> str:
    """A git-tracked file at ``rev`` (working tree when None)."""
    if rev is None:
        return (Path(repo) / path).read_text()
    return _git("show", f"{rev}:{path}", cwd=repo)


def _read_artifact(path: str, rev: str | None, repo: str = ".") -> str:
    """A DVC-tracked file at ``rev`` (from the cache/remote), or the working tree's copy."""
    if rev is None:
        return (Path(repo) / path).read_text()
    import dvc.api

    return dvc.api.read(path, repo=repo, rev=rev)


def metrics_at(rev: str | None, repo: str = ".") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in METRIC_FILES:
        try:
            data = json.loads(_read_at(f"data/metrics/{name}.json", rev, repo))
        except (ValueError, FileNotFoundError, json.JSONDecodeError):
            continue
        out.update({f"{name}/{k}": v for k, v in data.items() if isinstance(v, (int, float, bool, str))})
    return out


def versions(repo: str = ".") -> list[dict[str, str]]:
    log = _git("log", "--format=%h%x09%ad%x09%s", "--date=short", "--", "dvc.lock", cwd=repo)
    return [dict(zip(("rev", "date", "message"), line.split("\t", 2))) for line in log.splitlines() if line]


def cmd_versions(args: Any) -> dict[str, Any]:
    table = Table(title="dataset/checkpoint versions (commits that changed dvc.lock)")
    for col in ("rev", "date", "frames", "mean return", "tokenizer psnr", "return pmpo", "message"):
        table.add_column(col)
    rows = versions(args.repo)
    for v in rows:
        m = metrics_at(v["rev"], args.repo)
        table.add_row(v["rev"], v["date"], str(m.get("collect/frames", "-")),
                      _fmt(m.get("collect/mean_return")), _fmt(m.get("tokenizer/val/psnr")),
                      _fmt(m.get("evaluate/return/pmpo")), v["message"][:50])
    console.print(table)
    return {"versions": len(rows)}


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v))


def dataset_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": manifest.get("kind"), "policy": manifest.get("policy"),
                           "game": (manifest.get("env") or {}).get("game")}
    for split, info in manifest["splits"].items():
        rets = [e["ret"] for e in info["episodes"]]
        out[split] = {"episodes": info["n_episodes"], "frames": info["frames"], "shards": len(info["shards"]),
                      "mean_return": sum(rets) / len(rets) if rets else None}
    return out


def action_histogram(shard_dir: str, split: str = "train", max_samples: int = 200) -> dict[int, int]:
    import numpy as np

    from wm.data.shards import iter_shard, shard_paths

    counts: dict[int, int] = {}
    seen = 0
    for path in shard_paths(shard_dir, split, verify=False):
        for sample in iter_shard(path):
            for a, n in zip(*np.unique(sample["actions"], return_counts=True)):
                counts[int(a)] = counts.get(int(a), 0) + int(n)
            seen += 1
            if seen >= max_samples:
                return counts
    return counts


def sample_gif(shard_dir: str, out: Path, frames: int = 32, scale: int = 3) -> Path:
    from PIL import Image

    from wm.data.shards import iter_shard, shard_paths
    from wm.plots import save_gif

    sample = next(iter_shard(shard_paths(shard_dir, "val", verify=False)[0]))
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.Resampling.NEAREST)
              for f in sample["frames"][:frames]]
    save_gif(images, out, duration_ms=80)
    return out


def cmd_dataset(args: Any) -> dict[str, Any]:
    manifest = json.loads(_read_artifact(f"{args.shards}/manifest.json", args.rev, args.repo))
    summary = dataset_summary(manifest)
    table = Table(title=f"dataset {args.shards} @ {args.rev or 'workspace'} ({summary['game']}, {summary['policy']})")
    for col in ("split", "episodes", "frames", "shards", "mean return"):
        table.add_column(col)
    for split in ("train", "val"):
        s = summary[split]
        table.add_row(split, str(s["episodes"]), str(s["frames"]), str(s["shards"]), _fmt(s["mean_return"]))
    console.print(table)
    if args.rev is None:
        hist = action_histogram(args.shards)
        summary["action_histogram"] = hist
        total = sum(hist.values()) or 1
        h = Table(title="action histogram (train sample)")
        h.add_column("action")
        h.add_column("share")
        for a in sorted(hist):
            h.add_row(str(a), f"{hist[a] / total:.1%} " + "█" * int(40 * hist[a] / total))
        console.print(h)
        if args.gif:
            summary["gif"] = str(sample_gif(args.shards, Path(args.gif)))
            console.print(f"sample clip: {summary['gif']}")
    return summary


def cmd_checkpoint(args: Any) -> dict[str, Any]:
    from wm.training.checkpoint import load_checkpoint

    path = Path(args.repo) / "data/checkpoints" / args.name / "checkpoint.pt"
    if args.rev is not None:
        import tempfile

        import dvc.api

        with dvc.api.open(str(path.relative_to(args.repo)), repo=args.repo, rev=args.rev, mode="rb") as f:
            tmp = Path(tempfile.mkdtemp()) / "checkpoint.pt"
            tmp.write_bytes(f.read())
        path = tmp
    ckpt = load_checkpoint(path)
    params = sum(v.numel() for v in ckpt["model"].values())
    metrics = {k: v for k, v in metrics_at(args.rev, args.repo).items() if k.startswith(f"{args.name}/")}
    table = Table(title=f"checkpoint {args.name} @ {args.rev or 'workspace'}")
    table.add_column("key")
    table.add_column("value")
    table.add_row("step", str(ckpt["step"]))
    table.add_row("parameters", f"{params:,}")
    section = ckpt.get("config", {}).get(args.name, {})
    for k, v in section.items():
        if not isinstance(v, dict):
            table.add_row(f"config.{k}", str(v))
    for k, v in metrics.items():
        table.add_row(k, _fmt(v))
    console.print(table)
    return {"step": ckpt["step"], "params": params, "metrics": metrics}


def cmd_diff(args: Any) -> dict[str, Any]:
    a, b = metrics_at(args.rev_a, args.repo), metrics_at(args.rev_b, args.repo)
    table = Table(title=f"metrics {args.rev_a} -> {args.rev_b or 'workspace'}")
    for col in ("metric", str(args.rev_a), str(args.rev_b or "workspace"), "change"):
        table.add_column(col)
    diff = {}
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if va == vb:
            continue
        change = f"{vb - va:+.4g}" if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else ""
        table.add_row(k, _fmt(va), _fmt(vb), change)
        diff[k] = (va, vb)
    console.print(table)
    return {"changed": len(diff)}


def fetch_at(repo: str, path: str, rev: str, out: str | Path) -> None:
    """``path`` (a DVC-tracked artifact) as it was at git revision ``rev``, into ``out``."""
    cmd = ["dvc", "get", repo, path, "--rev", rev, "-o", str(out), "--force"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigValueError(f"could not fetch {path} at {rev}: {proc.stderr.strip()[-500:]}")


def cmd_fetch(args: Any) -> dict[str, Any]:
    fetch_at(args.repo, args.path, args.rev, args.out)
    console.print(f"fetched {args.path} @ {args.rev} -> {args.out}")
    return {"out": args.out}


def cmd_retrain(args: Any) -> dict[str, Any]:
    from wm.retrain import promoted, records

    rows = records(args.repo)
    table = Table(title="retraining iterations (data/retrain/records)")
    for col in ("iteration", "finished", "collected with", "new episodes", "train frames", "return pmpo",
                "gate baseline", "promoted"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["tag"], r["finished"], r["collect_policy"], str(r["collect"].get("episodes", "-")),
                      str(r["dataset"].get("train_frames", "-")), _fmt(r["gate"]["value"]),
                      f"{_fmt(r['gate']['baseline'])} ({r['gate']['against']})", "yes" if r["promoted"] else "no")
    console.print(table)
    current = promoted(args.repo)
    console.print(f"promoted policy: {current['tag'] + ' (' + current['sha256'][:12] + ')' if current else 'none yet'}")
    return {"iterations": len(rows), "promoted": current["tag"] if current else None}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("inspect", help="list/show/diff/fetch versioned datasets and checkpoints")
    isub = p.add_subparsers(dest="what", required=True)

    def common(q: Any) -> None:
        q.add_argument("--repo", default=".")

    q = isub.add_parser("versions", help="revisions that changed dvc.lock")
    common(q)
    q.set_defaults(func=cmd_versions)
    q = isub.add_parser("dataset", help="a dataset version's contents")
    common(q)
    q.add_argument("--rev", default=None)
    q.add_argument("--shards", default="data/shards")
    q.add_argument("--gif", default=None, help="write a sample clip here (workspace only)")
    q.set_defaults(func=cmd_dataset)
    q = isub.add_parser("checkpoint", help="a checkpoint: config, step, parameters, metrics")
    common(q)
    q.add_argument("name", help="tokenizer | dynamics")
    q.add_argument("--rev", default=None)
    q.set_defaults(func=cmd_checkpoint)
    q = isub.add_parser("diff", help="metrics difference between two revisions")
    common(q)
    q.add_argument("rev_a")
    q.add_argument("rev_b", nargs="?", default=None)
    q.set_defaults(func=cmd_diff)
    q = isub.add_parser("fetch", help="an artifact of any revision (dvc get)")
    common(q)
    q.add_argument("path")
    q.add_argument("--rev", required=True)
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_fetch)
    q = isub.add_parser("retrain", help="retraining iterations and the promoted policy")
    common(q)
    q.set_defaults(func=cmd_retrain)
