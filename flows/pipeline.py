"""The pipeline as a Prefect flow: one task per DVC stage, each run *through* DVC.

``dvc repro --single-item <stage>`` runs a stage only when its code, params or inputs
changed (so artifacts stay cached and versioned, and an unchanged stage is skipped), in the
order ``dvc.yaml`` defines. Collection is retried with backoff (emulator start-up and disk
hiccups are transient); training stages are not (a failure there is a bug or a bad config).
Each run leaves a markdown artifact with every stage's metrics.

    python -m flows.pipeline --preset debug          # compose params.yaml, then run
    python -m flows.pipeline --override collect.frames=20000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

TRANSIENT_STAGES = {"collect"}


def bin_path(name: str) -> str:
    """A console script from this environment (the venv's dvc/wm), else from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("WANDB_MODE", "offline")
    return env


def dvc_stages(repo: Path) -> list[dict[str, Any]]:
    """Stages in dvc.yaml order with their metrics files."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    out = []
    for name, stage in spec.items():
        metrics = [next(iter(m)) if isinstance(m, dict) else m for m in stage.get("metrics", [])]
        out.append({"name": name, "metrics": metrics})
    return out


def run_dvc_stage(repo: str, stage: str, metrics_files: list[str]) -> dict[str, Any]:
    logger = get_run_logger()
    proc = subprocess.run([bin_path("dvc"), "repro", "--single-item", stage], cwd=repo, env=tool_env(),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc repro {stage} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    skipped = "didn't change, skipping" in proc.stdout
    logger.info("stage %s: %s", stage, "unchanged, skipped" if skipped else "ran")
    metrics: dict[str, Any] = {}
    for rel in metrics_files:
        path = Path(repo) / rel
        if path.exists():
            metrics.update(json.loads(path.read_text()))
    return {"stage": stage, "skipped": skipped, "metrics": metrics}


transient_stage = task(run_dvc_stage, name="dvc-stage-retried", retries=3, retry_delay_seconds=[10, 30, 90])
stage_task = task(run_dvc_stage, name="dvc-stage")


def markdown_report(results: list[dict[str, Any]]) -> str:
    lines = ["# wm pipeline run", "", "| stage | status | metrics |", "|---|---|---|"]
    for r in results:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in r["metrics"].items() if isinstance(v, (int, float, str, bool)))
        lines.append(f"| {r['stage']} | {'skipped (unchanged)' if r['skipped'] else 'ran'} | {shown} |")
    return "\n".join(lines) + "\n"


DVC_RWLOCK = Path(".dvc/tmp/rwlock")


def clear_corrupt_dvc_rwlock(repo: Path) -> bool:
    """Remove DVC's read/write lock record when it is not valid JSON: a ``dvc`` killed while writing
    it leaves it empty or cut, and every later ``dvc repro`` then fails with "Unable to read
    RWLock-file" until someone deletes it. A readable record is left alone (it may be another
    run's lock). True when one was removed."""
    path = Path(repo) / DVC_RWLOCK
    try:
        json.loads(path.read_text())
        return False
    except FileNotFoundError:
        return False
    except (json.JSONDecodeError, UnicodeDecodeError):
        path.unlink(missing_ok=True)
        print(f"removed {path}: it was cut short (a dvc process was killed while writing it)", file=sys.stderr)
        return True


def run_stages(repo: Path, only: list[str] | None = None) -> list[dict[str, Any]]:
    """Each DVC stage (or those in ``only``) as a task, in dvc.yaml order; collection retried."""
    results = []
    for stage in dvc_stages(repo):
        if only and stage["name"] not in only:
            continue
        runner = transient_stage if stage["name"] in TRANSIENT_STAGES else stage_task
        results.append(runner(str(repo), stage["name"], stage["metrics"]))
    return results


@flow(name="wm-pipeline", log_prints=True)
def pipeline(repo: str = ".", preset: str | None = None, overrides: list[str] | None = None,
             stages: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the DVC pipeline stage by stage. ``preset``/``overrides`` recompose params.yaml first."""
    repo_path = Path(repo).resolve()
    if preset or overrides:
        cmd = [bin_path("wm"), "compose", *(["--preset", preset] if preset else []), *(overrides or [])]
        subprocess.run(cmd, cwd=repo_path, env=tool_env(), check=True, capture_output=True)
    clear_corrupt_dvc_rwlock(repo_path)  # a killed earlier run's dvc may have left it cut short
    results = run_stages(repo_path, stages)
    create_markdown_artifact(markdown_report(results), key="wm-pipeline-metrics",
                             description="metrics of every stage of this run")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", default=".")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--override", action="append", default=[], metavar="key=value")
    args = parser.parse_args()
    for r in pipeline(repo=args.repo, preset=args.preset, overrides=args.override):
        print(r["stage"], "skipped" if r["skipped"] else "ran")


if __name__ == "__main__":
    main()
