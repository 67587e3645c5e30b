"""Prefect front-end: collection on a Dask task runner, the pipeline flow over DVC stages."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_cfg
from wm.config import to_dict
from wm.data.episodes import load_episode


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_dask_collection_gives_the_same_episodes(debug_data, tmp_path, monkeypatch, prefect_harness):
    from wm.stages import collect

    out = tmp_path / "rollouts"
    cfg = make_cfg(to_dict(debug_data["cfg"]), "collect.backend=dask", f"collect.out_dir={out}")
    monkeypatch.chdir(tmp_path)
    metrics = collect.run(cfg)
    assert metrics["backend"] == "dask"
    ref_dir = Path(debug_data["cfg"].collect.out_dir)
    ref = json.loads((ref_dir / "manifest.json").read_text())["episodes"]
    got = json.loads((out / "manifest.json").read_text())["episodes"]
    assert [(e["episode"], e["length"], e["ret"], e["seed"]) for e in got] == \
           [(e["episode"], e["length"], e["ret"], e["seed"]) for e in ref]
    for e in ref:
        a, b = load_episode(ref_dir / e["file"]), load_episode(out / e["file"])
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.actions, b.actions)


@pytest.mark.slow
def test_pipeline_flow_runs_debug_preset_and_skips_unchanged(tmp_path, prefect_harness):
    import subprocess

    from conftest import copy_repo, env_with_venv
    from flows.pipeline import markdown_report, pipeline

    repo = copy_repo(tmp_path / "repo")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env_with_venv())
    first = pipeline(repo=str(repo), preset="debug")
    names = [r["stage"] for r in first]
    assert names[:3] == ["collect", "shard", "train_tokenizer"]
    assert not any(r["skipped"] for r in first)
    assert first[0]["metrics"]["frames"] > 0
    second = pipeline(repo=str(repo))
    assert all(r["skipped"] for r in second), [r["stage"] for r in second if not r["skipped"]]
    report = markdown_report(first)
    assert "| collect | ran |" in report and "mean_return" in report
