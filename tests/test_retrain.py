"""Scheduled retraining (Dreamer's outer loop): lock, gate, promotion, dataset versions, crash safety."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import copy_repo, env_with_venv
from wm import retrain as rt
from wm.stages import shard


def test_lock_excludes_a_second_run_and_takes_over_a_stale_one(tmp_path):
    with rt.retrain_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(rt.RetrainLockedError, match="another retrain run holds"):
            with rt.retrain_lock(tmp_path):
                pass
    assert not path.exists()  # released
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"pid": dead.pid, "host": __import__("socket").gethostname(), "started": "x"}))
    with rt.retrain_lock(tmp_path):  # its process is gone: taken over
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_gate_compares_with_promoted_or_random():
    m = {"return/pmpo": 250.0, "return/random": 200.0}
    assert rt.gate(m, None)["passed"] and rt.gate(m, None)["against"] == "random policy"
    assert not rt.gate(m, {"tag": "iter_0001", "gate_value": 260.0})["passed"]
    assert rt.gate(m, {"tag": "iter_0001", "gate_value": 260.0}, tolerance=10.0)["passed"]
    with pytest.raises(KeyError, match="return/pmpo"):
        rt.gate({"return/random": 1.0}, None)


def test_state_snapshot_promote_and_records(tmp_path):
    repo = tmp_path
    for stage in ("tokenizer", "dynamics", "pmpo"):
        d = repo / "data/checkpoints" / stage
        d.mkdir(parents=True)
        torch.save({"model": {"w": torch.ones(2)}, "stage": stage}, d / "checkpoint.pt")
    state = rt.start_or_resume(repo)
    assert state["iteration"] == 1 and state["policy"] == "random" and not state["resumed"]
    rt.mark_done(repo, state, "collect")
    again = rt.start_or_resume(repo)  # an interrupted iteration continues
    assert again["resumed"] and again["done"] == ["collect"] and again["tag"] == "iter_0001"
    warm = rt.snapshot_warm(repo, "iter_0001")
    assert set(warm) == {"tokenizer", "dynamics"}
    # a re-run keeps the first snapshot even when the live checkpoint changed since
    torch.save({"model": {"w": torch.zeros(2)}}, repo / "data/checkpoints/dynamics/checkpoint.pt")
    rt.snapshot_warm(repo, "iter_0001")
    snap = torch.load(repo / warm["dynamics"] / "checkpoint.pt")
    assert torch.equal(snap["model"]["w"], torch.ones(2))
    over = rt.warm_overrides({"tokenizer": {"train": {"steps": 100, "warmup": 50}},
                              "dynamics": {"train": {"steps": 40, "warmup": 5}}}, warm, 0.5)
    assert "tokenizer.train.steps=50" in over and "tokenizer.train.warmup=5" in over
    assert f"dynamics.train.init_from={warm['dynamics']}" in over
    verdict = rt.gate({"return/pmpo": 3.0, "return/random": 1.0}, None)
    info = rt.promote(repo, "data/checkpoints/pmpo", "data/checkpoints/tokenizer", "iter_0001", verdict)
    assert rt.promoted(repo)["sha256"] == info["sha256"]
    assert (repo / "data/retrain/promoted/tokenizer/checkpoint.pt").exists()
    assert rt.collect_policy(repo) == "agent:data/retrain/promoted"
    rt.write_record(repo, {"iteration": 1, "tag": "iter_0001"})
    rt.finish(repo)
    assert rt.start_or_resume(repo)["iteration"] == 2


def test_shard_reads_extra_sets_without_moving_the_base_split(debug_data, tmp_path, monkeypatch):
    from conftest import make_cfg
    from wm.config import to_dict
    from wm.stages import collect

    cfg = debug_data["cfg"]
    extra = tmp_path / "collected"
    monkeypatch.chdir(tmp_path)
    raw = to_dict(cfg)
    collect.run(make_cfg(raw, f"collect.out_dir={extra / 'iter_0001'}", "collect.seed=5", "collect.frames=300"),
                metrics_path=tmp_path / "c.json")
    (extra / ".iter_0002.partial").mkdir()  # an interrupted collection is ignored
    base = shard.run(make_cfg(raw, f"shard.out_dir={tmp_path / 'a'}", "shard.extra_dir="))
    grown = shard.run(make_cfg(raw, f"shard.out_dir={tmp_path / 'b'}", f"shard.extra_dir={extra}"))
    assert grown["episode_sets"] == 2 and base["episode_sets"] == 1
    ma = json.loads((tmp_path / "a/manifest.json").read_text())
    mb = json.loads((tmp_path / "b/manifest.json").read_text())
    val_a = {e["episode"] for e in ma["splits"]["val"]["episodes"]}
    val_b = {e["episode"] for e in mb["splits"]["val"]["episodes"]}
    assert val_a == {e for e in val_b if e < shard.EXTRA_OFFSET}  # the base split did not move
    ids = [e["episode"] for s in mb["splits"].values() for e in s["episodes"]]
    assert len(ids) == len(set(ids)) and any(i >= shard.EXTRA_OFFSET for i in ids)
    assert mb["sources"][1]["dir"].endswith("iter_0001")


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, env=env_with_venv(), capture_output=True, text=True,
                          check=True).stdout.strip()


def _retrain_cmd(repo):
    return [sys.executable, "-m", "flows.retrain", "--repo", str(repo), "--preset", "debug", "--frames", "600"]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes of real stages: a slow or busy 2-core runner must not hit the 600 s default
def test_retrain_iteration_then_killed_iteration_keeps_previous_version(tmp_path):
    """One real iteration on the debug preset adds a dataset version and a record; a second one
    SIGKILLed mid-training leaves iteration 1 intact, and a re-run completes it."""
    repo = copy_repo(tmp_path / "repo")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy")
    env = {**env_with_venv(), "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
           "PREFECT_HOME": str(tmp_path / "prefect")}
    params_before = (repo / "params.yaml").read_text()
    run1 = subprocess.run(_retrain_cmd(repo), cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert run1.returncode == 0, run1.stderr[-4000:]
    # the iteration's warm-start params do not stay behind for a later plain `dvc repro`
    assert (repo / "params.yaml").read_text() == params_before
    rec1 = json.loads((repo / "data/retrain/records/iter_0001.json").read_text())
    assert rec1["collect_policy"] == "random" and rec1["dataset"]["sets"] == ["iter_0001"]
    assert (repo / "data/collected/iter_0001.dvc").exists()
    assert "retrain iter_0001" in _git(repo, "log", "-1", "--format=%s")
    assert _git(repo, "ls-files", "data/collected/iter_0001.dvc", "data/retrain/records/iter_0001.json")
    head1 = _git(repo, "rev-parse", "HEAD")
    promoted1 = (repo / "data/retrain/promoted.json").read_text() if rec1["promoted"] else None

    # iteration 2: killed once a training stage is running
    proc = subprocess.Popen(_retrain_cmd(repo), cwd=repo, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900
    state = repo / "data/retrain/state.json"
    try:
        while time.time() < deadline and proc.poll() is None:
            if state.exists() and "version" in json.loads(state.read_text())["done"]:
                time.sleep(3)  # the episodes are versioned; the DVC stages are running now
                break
            time.sleep(0.2)
        assert proc.poll() is None, "iteration 2 finished before it could be killed"
    finally:  # also when the test fails or times out: no dvc or training process is left running
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _git(repo, "rev-parse", "HEAD") == head1  # no half iteration committed
    assert sorted(p.name for p in (repo / "data/retrain/records").iterdir()) == ["iter_0001.json"]
    if promoted1 is not None:
        assert (repo / "data/retrain/promoted.json").read_text() == promoted1
        digest = json.loads(promoted1)["sha256"]
        assert rt.sha256(repo / "data/retrain/promoted/checkpoint.pt") == digest
    assert (repo / "data/collected/iter_0001/manifest.json").exists()

    run2 = subprocess.run(_retrain_cmd(repo), cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert run2.returncode == 0, run2.stderr[-4000:]
    rec2 = json.loads((repo / "data/retrain/records/iter_0002.json").read_text())
    assert rec2["resumed"] and rec2["dataset"]["sets"] == ["iter_0001", "iter_0002"]
    assert set(rec2["warm_start"]) == {"tokenizer", "dynamics"}
    assert any(o.startswith("dynamics.train.init_from=") for o in rec2["params_overrides"])
    assert (repo / "params.yaml").read_text() == params_before
    assert rec2["dataset"]["shards_manifest_sha256"] != rec1["dataset"]["shards_manifest_sha256"]
    assert not state.exists() and not (repo / "data/retrain/.lock").exists()
    shown = subprocess.run(["wm", "inspect", "retrain", "--repo", str(repo)], env=env, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0 and "iter_0001" in shown.stdout and "iter_0002" in shown.stdout, shown.stderr
