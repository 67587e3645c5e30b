"""Scheduled retraining, Dreamer's outer loop, as a Prefect flow.

Each run is one iteration: collect with the promoted policy, add the episodes as a new DVC
dataset version, retrain the stages warm-started from the last checkpoints, evaluate in the
real game, promote only if the return does not regress, record the iteration. The steps,
their crash-safety and the files they write are described in ``wm/retrain.py``; this module
only sequences them as Prefect tasks (collection is retried: emulator start-up and disk
hiccups are transient).

    python -m flows.retrain --preset debug --frames 2000      # one iteration now
    prefect deploy --name retrain-nightly                     # on a schedule (prefect.yaml)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task

from flows.pipeline import bin_path, clear_corrupt_dvc_rwlock, tool_env, run_stages
from wm import retrain as rt
from wm.config import compose, write_params


def _run(cmd: list[str], repo: Path, what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=repo, env=tool_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    return proc


@task(name="collect-new-episodes", retries=3, retry_delay_seconds=[10, 30, 90])
def collect_new(repo: str, tag: str, policy: str, seed: int, frames: int | None) -> dict[str, Any]:
    """Episodes of ``policy`` into data/collected/<tag> (atomic: a retry starts clean)."""
    repo_path = Path(repo)
    out = rt.COLLECTED_DIR / tag
    metrics = rt.RETRAIN_DIR / "collect" / f"{tag}.json"
    if not (repo_path / out / "manifest.json").exists():
        cmd = [bin_path("wm"), "collect", f"collect.out_dir={out}", f"collect.policy={policy}", f"collect.seed={seed}",
               *([f"collect.frames={frames}"] if frames else []), "--metrics", str(metrics)]
        _run(cmd, repo_path, "collection")
    path = repo_path / metrics
    return json.loads(path.read_text()) if path.exists() else {}


@task(name="dvc-add")
def dvc_add(repo: str, paths: list[str]) -> None:
    """Track the new episode set (and the warm-start snapshot) as DVC data: a new dataset version."""
    if paths:
        _run([bin_path("dvc"), "add", *paths], Path(repo), "dvc add")


def _preset(repo: Path, preset: str | None) -> str:
    """The given preset, else the one params.yaml was composed from."""
    if preset is None:
        current = yaml.safe_load((repo / "params.yaml").read_text()) if (repo / "params.yaml").exists() else {}
        preset = (current or {}).get("preset_name", "default")
    return preset


def _compose(repo: Path, preset: str, overrides: list[str], base: dict[str, Any], warm: dict[str, str],
             steps_fraction: float) -> dict[str, Any]:
    """params.yaml = preset + user overrides (``base``) + this iteration's warm-start overrides."""
    extra = rt.warm_overrides(base, warm, steps_fraction)
    params = compose(preset, [*overrides, *extra])
    write_params(params, repo / "params.yaml")
    return params


def _git_commit(repo: Path, message: str) -> str | None:
    """Commit the iteration's versioned files (when ``repo`` is a git repository)."""
    if not (repo / ".git").exists():
        return None
    paths = ["dvc.lock", "params.yaml", "data/metrics", str(rt.COLLECTED_DIR), str(rt.RETRAIN_DIR)]
    _run(["git", "add", "-A", "--", *[p for p in paths if (repo / p).exists()]], repo, "git add")
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=repo).returncode == 0:
        return None
    env = {"GIT_AUTHOR_NAME": "wm-retrain", "GIT_AUTHOR_EMAIL": "wm-retrain@localhost",
           "GIT_COMMITTER_NAME": "wm-retrain", "GIT_COMMITTER_EMAIL": "wm-retrain@localhost"}
    env.update({k: v for k, v in os.environ.items() if k in env})
    subprocess.run(["git", "commit", "-q", "-m", message], cwd=repo, env={**tool_env(), **env}, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()


@flow(name="wm-retrain", log_prints=True)
def retrain(repo: str = ".", preset: str | None = None, overrides: list[str] | None = None,
            frames: int | None = None, steps_fraction: float = 0.5, tolerance: float = 0.0,
            commit: bool = True) -> dict[str, Any]:
    """One retraining iteration (continues an interrupted one). ``frames``: new frames to
    collect (default: the preset's collect.frames); ``steps_fraction``: share of each
    warm-started stage's usual steps; ``tolerance``: allowed drop of the gate metric."""
    logger = get_run_logger()
    repo_path = Path(repo).resolve()
    overrides = list(overrides or [])
    used_preset = _preset(repo_path, preset)
    base = compose(used_preset, overrides)  # validates the overrides before anything runs
    with rt.retrain_lock(repo_path):
        state = rt.start_or_resume(repo_path)
        clear_corrupt_dvc_rwlock(repo_path)  # before any dvc call (dvc add, the stages) of this iteration
        tag, n = state["tag"], state["iteration"]
        logger.info("%s iteration %d (%s), collecting with %s", "resuming" if state["resumed"] else "starting",
                    n, tag, state["policy"])
        if "collect" not in state["done"]:
            seed = base["collect"]["seed"] + 7919 * n
            state["collect"] = collect_new(str(repo_path), tag, state["policy"], seed, frames)
            rt.mark_done(repo_path, state, "collect")
        if "snapshot" not in state["done"]:
            state["warm"] = rt.snapshot_warm(repo_path, tag)
            rt.mark_done(repo_path, state, "snapshot")
        if "version" not in state["done"]:
            paths = [str(rt.COLLECTED_DIR / tag)]
            if state["warm"]:
                paths.append(str(rt.RETRAIN_DIR / "warm" / tag))
            dvc_add(str(repo_path), paths)
            rt.mark_done(repo_path, state, "version")
        # this iteration's params (warm starts, reduced steps) live in params.yaml only while its
        # stages run; afterwards params.yaml is what it was, so a later plain `dvc repro` does not
        # inherit them (the record keeps them; dvc.lock shows which params made the artifacts)
        params_file = repo_path / "params.yaml"
        before = state.get("params_before")  # as the iteration found it (a killed run left its own behind)
        try:
            params = _compose(repo_path, used_preset, overrides, base, state["warm"], steps_fraction)
            stages = run_stages(repo_path)  # DVC skips what is done, re-runs what crashed
        finally:
            if before is not None:
                params_file.write_text(before)
        metrics = json.loads((repo_path / "data/metrics/evaluate.json").read_text())
        current = rt.promoted(repo_path)
        verdict = rt.gate(metrics, current, tolerance)
        promoted_info = None
        if verdict["passed"]:
            promoted_info = rt.promote(repo_path, params["rl"]["out_dir"], params["tokenizer"]["out_dir"], tag,
                                       verdict)
        record = {
            "iteration": n, "tag": tag, "started": state["started"], "finished": rt.now(),
            "resumed": state["resumed"], "preset": used_preset, "overrides": overrides,
            "collect_policy": state["policy"], "collect": state.get("collect", {}),
            "warm_start": state["warm"], "steps_fraction": steps_fraction,
            "params_overrides": rt.warm_overrides(base, state["warm"], steps_fraction),
            "dataset": rt.dataset_version(repo_path),
            "stages": {s["stage"]: "skipped" if s["skipped"] else "ran" for s in stages},
            "metrics": metrics, "gate": verdict, "promoted": verdict["passed"],
            "promoted_policy": promoted_info or current,
        }
        rt.write_record(repo_path, record)
        rt.finish(repo_path)
        rev = _git_commit(repo_path, f"retrain {tag}: {verdict['metric']} {verdict['value']:.1f} vs "
                                     f"{verdict['baseline']:.1f} ({verdict['against']}): "
                                     f"{'promoted' if verdict['passed'] else 'kept the promoted policy'}") \
            if commit else None
        record["commit"] = rev
        logger.info("%s: %s %.2f vs %.2f -> %s", tag, verdict["metric"], verdict["value"], verdict["baseline"],
                    "promoted" if verdict["passed"] else "not promoted")
        return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", default=".")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--override", action="append", default=[], metavar="key=value")
    parser.add_argument("--frames", type=int, default=None, help="new frames to collect this iteration")
    parser.add_argument("--steps-fraction", type=float, default=0.5)
    parser.add_argument("--tolerance", type=float, default=0.0)
    parser.add_argument("--no-commit", action="store_true")
    args = parser.parse_args()
    try:
        record = retrain(repo=args.repo, preset=args.preset, overrides=args.override, frames=args.frames,
                         steps_fraction=args.steps_fraction, tolerance=args.tolerance, commit=not args.no_commit)
    except rt.RetrainLockedError as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps({k: record[k] for k in ("tag", "promoted", "gate", "dataset", "commit")}, indent=2))


if __name__ == "__main__":
    main()
