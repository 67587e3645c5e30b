"""Crash safety: a SIGKILLed training run resumes to exactly the uninterrupted result."""

import pytest
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import env_with_venv
from wm.training.checkpoint import load_checkpoint
import torch


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes of real stages: a slow or busy 2-core runner must not hit the 600 s default
def test_kill_and_resume_matches_uninterrupted_run(debug_data, tmp_path):
    """SIGKILL a real `wm train-tokenizer` mid-run; --resume then reproduces the loss curve."""
    shards = debug_data["cfg"].shard.out_dir
    common = ["--preset", "debug", f"shard.out_dir={shards}", "tokenizer.train.steps=400",
              "tokenizer.train.ckpt_every=50", "tokenizer.train.eval_every=1000", "tokenizer.train.log_every=10"]

    def losses(workdir: Path) -> dict[int, float]:
        tsv = next((workdir / "data/metrics/tokenizer/plots/metrics").rglob("train/loss.tsv"))
        rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
        return {int(r[0]): float(r[1]) for r in rows}  # later rows (after resume) win

    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "kill"
    for d in (ref_dir, kill_dir):
        d.mkdir()
    cmd = [sys.executable, "-m", "wm.cli", "train-tokenizer", *common, "tokenizer.out_dir=tok"]
    subprocess.run(cmd, cwd=ref_dir, env=env_with_venv(), check=True, capture_output=True)

    proc = subprocess.Popen(cmd, cwd=kill_dir, env=env_with_venv(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = kill_dir / "tok/checkpoint.pt"
    deadline = time.time() + 900  # a slow runner may need minutes to reach step 100
    try:
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists() and load_checkpoint(ckpt)["step"] >= 100:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert ckpt.exists(), "no checkpoint within 900 s: the run was too slow to be killed mid-run"
    killed_at = load_checkpoint(ckpt)["step"]
    assert killed_at < 400, "run finished before it could be killed; raise steps"
    subprocess.run(cmd + ["--resume"], cwd=kill_dir, env=env_with_venv(), check=True, capture_output=True)
    assert load_checkpoint(ckpt)["step"] == 400
    ref, got = losses(ref_dir), losses(kill_dir)
    assert sorted(ref) == sorted(got)
    after = [s for s in ref if s > killed_at]
    assert after and all(ref[s] == got[s] for s in after), [(s, ref[s], got[s]) for s in after if ref[s] != got[s]]
    ref_final = load_checkpoint(ref_dir / "tok/checkpoint.pt")["model"]
    got_final = load_checkpoint(ckpt)["model"]
    assert all(torch.equal(ref_final[k], got_final[k]) for k in ref_final)
