"""A DVC stage killed mid-way is re-run cleanly by the next `dvc repro`."""

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import copy_repo, env_with_venv


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes of real stages: a slow or busy 2-core runner must not hit the 600 s default
def test_interrupted_stage_reruns_cleanly(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    (repo / "dvc.lock").unlink(missing_ok=True)  # start from a repository that never ran a stage
    env = env_with_venv()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
                ["wm", "compose", "--preset", "debug", "tokenizer.train.steps=3000"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    proc = subprocess.Popen(["dvc", "repro", "train_tokenizer"], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    ckpt = repo / "data/checkpoints/tokenizer/checkpoint.pt"
    deadline = time.time() + 600  # a slow runner may take minutes to the first checkpoint
    try:
        while time.time() < deadline and not ckpt.exists() and proc.poll() is None:
            time.sleep(0.2)
        assert ckpt.exists(), "no tokenizer checkpoint within 600 s: training never started or was too slow"
    finally:  # also on failure: dvc and the training process with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # the interrupted stage is not recorded as done
    lock = (repo / "dvc.lock").read_text() if (repo / "dvc.lock").exists() else ""
    assert "train_tokenizer" not in lock
    subprocess.run(["wm", "compose", "--preset", "debug"], cwd=repo, env=env, check=True, capture_output=True)
    out = subprocess.run(["dvc", "repro", "train_tokenizer"], cwd=repo, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "train_tokenizer" in (repo / "dvc.lock").read_text()
    metrics = json.loads((repo / "data/metrics/tokenizer.json").read_text())
    assert metrics["steps"] == 30  # the debug preset's, from a clean start
    status = subprocess.run(["dvc", "status", "train_tokenizer"], cwd=repo, env=env, capture_output=True, text=True)
    assert "up to date" in status.stdout.lower() or "everything is up to date" in status.stdout.lower()
