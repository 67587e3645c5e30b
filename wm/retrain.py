"""Scheduled retraining, Dreamer's outer loop, as versioned iterations (run by flows/retrain.py).

One iteration, each step safe to repeat after a crash:

1. **collect** new episodes with the latest promoted policy (random before one exists) into
   ``data/collected/iter_NNNN`` (built in a hidden temp dir and renamed: never half there);
2. **snapshot** the current tokenizer and dynamics checkpoints to ``data/retrain/warm/iter_NNNN``
   (the warm start of this iteration's training; kept, so the iteration can be reproduced);
3. **version**: ``dvc add`` both, so the grown dataset is a new DVC version;
4. **train**: compose params.yaml with the warm-start overrides and run the DVC stages
   (an unchanged stage is skipped, a stage that crashed is re-run cleanly by DVC);
5. **gate**: promote the new PMPO policy only if its real-game return does not regress
   against the promoted one (or against the random policy before one exists);
6. **record** ``data/retrain/records/iter_NNNN.json`` (dataset version, metrics, promoted or
   not) and, in a git repo, commit the iteration.

``data/retrain/state.json`` says which iteration is in flight and which steps are done; a
re-run continues it. ``data/retrain/.lock`` keeps two runs from overlapping.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wm.atomic import atomic_dir, write_json_atomic
from wm.data.shards import sha256_file
from wm.errors import UserError

RETRAIN_DIR = Path("data/retrain")
COLLECTED_DIR = Path("data/collected")
LOCK_NAME = ".lock"
STATE_NAME = "state.json"
PROMOTED_NAME = "promoted"  # dir: the promoted policy's checkpoint
PROMOTED_JSON = "promoted.json"
WARM_STAGES = {"tokenizer": "data/checkpoints/tokenizer", "dynamics": "data/checkpoints/dynamics"}
GATE_METRIC = "return/pmpo"


class RetrainLockedError(UserError, RuntimeError):
    """Another retrain run holds the lock."""


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def retrain_lock(repo: str | Path) -> Iterator[Path]:
    """Exclusive lock file ``data/retrain/.lock`` (pid, host, start). A lock left by a process
    that no longer runs on this host is taken over; a live one raises RetrainLockedError."""
    path = Path(repo) / RETRAIN_DIR / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": now()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                holder = {}
            pid, host = int(holder.get("pid", 0) or 0), holder.get("host")
            if pid and host == me["host"] and not _pid_alive(pid):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise RetrainLockedError(
                f"another retrain run holds {path} (pid {pid or '?'} on {host or '?'}, since "
                f"{holder.get('started', '?')}); wait for it to finish, or delete the file if that "
                "process no longer exists") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def iteration_tag(n: int) -> str:
    return f"iter_{n:04d}"


def load_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def records(repo: str | Path) -> list[dict[str, Any]]:
    """Every finished iteration's record, oldest first."""
    d = Path(repo) / RETRAIN_DIR / "records"
    return [json.loads(p.read_text()) for p in sorted(d.glob("iter_*.json"))] if d.is_dir() else []


def promoted(repo: str | Path) -> dict[str, Any] | None:
    """The promoted policy's record (iteration, gate value, checkpoint digest), if any."""
    info = load_json(Path(repo) / RETRAIN_DIR / PROMOTED_JSON)
    if info and (Path(repo) / RETRAIN_DIR / PROMOTED_NAME / "checkpoint.pt").exists():
        return info
    return None


def collect_policy(repo: str | Path) -> str:
    """``agent:data/retrain/promoted`` once a policy was promoted, else ``random``."""
    return f"agent:{RETRAIN_DIR / PROMOTED_NAME}" if promoted(repo) else "random"


def start_or_resume(repo: str | Path) -> dict[str, Any]:
    """The in-flight iteration's state, or a new one numbered after the last record."""
    path = Path(repo) / RETRAIN_DIR / STATE_NAME
    state = load_json(path)
    if state is not None:
        state["resumed"] = True
        return state
    done = records(repo)
    n = (done[-1]["iteration"] + 1) if done else 1
    params = Path(repo) / "params.yaml"  # restored when the iteration ends, even after a crash and a re-run
    state = {"iteration": n, "tag": iteration_tag(n), "started": now(), "policy": collect_policy(repo),
             "done": [], "resumed": False, "params_before": params.read_text() if params.exists() else None}
    write_json_atomic(path, state)
    return state


def mark_done(repo: str | Path, state: dict[str, Any], step: str) -> None:
    if step not in state["done"]:
        state["done"].append(step)
    write_json_atomic(Path(repo) / RETRAIN_DIR / STATE_NAME, state)


def finish(repo: str | Path) -> None:
    (Path(repo) / RETRAIN_DIR / STATE_NAME).unlink(missing_ok=True)


sha256 = sha256_file  # the digest the shard manifests use


def snapshot_warm(repo: str | Path, tag: str) -> dict[str, str]:
    """Copy the current tokenizer/dynamics checkpoints to data/retrain/warm/<tag> once (a
    re-run keeps the first snapshot: by then the checkpoints may be this iteration's own).
    Returns {stage: checkpoint dir} for the stages that had one."""
    repo = Path(repo)
    dest = repo / RETRAIN_DIR / "warm" / tag
    if not dest.exists():
        have = {s: repo / src / "checkpoint.pt" for s, src in WARM_STAGES.items()}
        have = {s: p for s, p in have.items() if p.exists()}
        if not have:
            return {}
        with atomic_dir(dest) as tmp:
            for stage, src in have.items():
                (tmp / stage).mkdir()
                shutil.copy2(src, tmp / stage / "checkpoint.pt")
    return {s: str(RETRAIN_DIR / "warm" / tag / s) for s in WARM_STAGES if (dest / s / "checkpoint.pt").exists()}


def warm_overrides(cfg_raw: dict[str, Any], warm: dict[str, str], steps_fraction: float) -> list[str]:
    """init_from for each warm-started stage, with ``steps_fraction`` of its usual steps."""
    out = []
    for stage, ckpt in warm.items():
        steps = max(1, round(cfg_raw[stage]["train"]["steps"] * steps_fraction))
        out += [f"{stage}.train.init_from={ckpt}", f"{stage}.train.steps={steps}"]
        warmup = cfg_raw[stage]["train"]["warmup"]
        out.append(f"{stage}.train.warmup={min(warmup, max(1, steps // 10))}")
    return out


def gate(metrics: dict[str, Any], current: dict[str, Any] | None, tolerance: float = 0.0) -> dict[str, Any]:
    """Promote when the new policy's real-game return is >= the promoted one's (or, before one
    exists, the random policy's from the same evaluation) minus ``tolerance``."""
    if GATE_METRIC not in metrics:
        raise KeyError(f"evaluate metrics lack {GATE_METRIC}; did the evaluate stage run?")
    value = float(metrics[GATE_METRIC])
    if current is not None:
        baseline, against = float(current["gate_value"]), f"promoted {current['tag']}"
    else:
        baseline, against = float(metrics["return/random"]), "random policy"
    return {"metric": GATE_METRIC, "value": value, "baseline": baseline, "against": against,
            "tolerance": tolerance, "passed": value >= baseline - tolerance}


def promote(repo: str | Path, policy_dir: str | Path, tokenizer_dir: str | Path, tag: str,
            gate_result: dict[str, Any]) -> dict[str, Any]:
    """Atomically replace data/retrain/promoted with the policy's checkpoint and the tokenizer it
    sees through (``promoted/tokenizer``: later iterations retrain the tokenizer), then write
    promoted.json."""
    repo = Path(repo)
    with atomic_dir(repo / RETRAIN_DIR / PROMOTED_NAME) as tmp:
        shutil.copy2(repo / policy_dir / "checkpoint.pt", tmp / "checkpoint.pt")
        (tmp / "tokenizer").mkdir()
        shutil.copy2(repo / tokenizer_dir / "checkpoint.pt", tmp / "tokenizer" / "checkpoint.pt")
    info = {"tag": tag, "gate_value": gate_result["value"], "metric": gate_result["metric"],
            "sha256": sha256(repo / RETRAIN_DIR / PROMOTED_NAME / "checkpoint.pt"), "promoted_at": now()}
    write_json_atomic(repo / RETRAIN_DIR / PROMOTED_JSON, info)
    return info


def write_record(repo: str | Path, record: dict[str, Any]) -> Path:
    path = Path(repo) / RETRAIN_DIR / "records" / f"{record['tag']}.json"
    write_json_atomic(path, record)
    return path


def dataset_version(repo: str | Path) -> dict[str, Any]:
    """What identifies this iteration's dataset: the shard manifest's digest and episode sets."""
    repo = Path(repo)
    manifest = repo / "data/shards/manifest.json"
    info: dict[str, Any] = {"sets": sorted(p.name for p in (repo / COLLECTED_DIR).glob("iter_*") if p.is_dir())}
    if manifest.exists():
        m = json.loads(manifest.read_text())
        info.update(shards_manifest_sha256=sha256(manifest),
                    train_frames=m["splits"]["train"]["frames"], val_frames=m["splits"].get("val", {}).get("frames"),
                    episodes=sum(s["n_episodes"] for s in m["splits"].values()))
    return info
