"""Bad input and failing disks: a clear error, a non-zero exit, and nothing existing touched."""

import errno
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import env_with_venv, make_cfg
from wm.config import to_dict
from wm.training.checkpoint import load_checkpoint, save_checkpoint


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def wm(args, cwd):
    return subprocess.run([sys.executable, "-m", "wm.cli", *args], cwd=cwd, env=env_with_venv(),
                          capture_output=True, text=True)


@pytest.fixture()
def workdir(debug_data, tmp_path):
    """A debug workspace (params, rollouts, shards, metrics) to break things in."""
    base = debug_data["dir"]
    shutil.copytree(base / "rollouts", tmp_path / "data/rollouts")
    shutil.copytree(base / "shards", tmp_path / "data/shards")
    shutil.copytree(base / "data/metrics", tmp_path / "data/metrics")
    assert wm(["compose", "--preset", "debug"], tmp_path).returncode == 0
    return tmp_path


def assert_untouched(workdir: Path, before: str, proc, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr
    assert tree_digest(workdir / "data") == before


def test_truncated_shard(workdir):
    shard = next((workdir / "data/shards/train").glob("*.tar"))
    shard.write_bytes(shard.read_bytes()[:5000])
    before = tree_digest(workdir / "data")
    proc = wm(["train-tokenizer"], workdir)
    assert_untouched(workdir, before, proc, str(shard.relative_to(workdir)), "corrupt")


def test_corrupt_and_wrong_shape_checkpoints(workdir):
    ckpt = workdir / "data/checkpoints/tokenizer/checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"\x00not a checkpoint" * 50)
    before = tree_digest(workdir / "data")
    proc = wm(["cache-latents"], workdir)
    assert_untouched(workdir, before, proc, "checkpoint.pt", "corrupt or truncated")
    # a real checkpoint of another architecture
    raw = to_dict(make_cfg(__import__("wm.config", fromlist=["compose"]).compose("debug")))
    save_checkpoint(ckpt, {"model": {"patch_in.weight": torch.zeros(3, 3)}, "config": raw})
    before = tree_digest(workdir / "data")
    proc = wm(["cache-latents"], workdir)
    assert_untouched(workdir, before, proc, "does not fit")


def test_missing_rom_unknown_game_bad_override(workdir):
    before = tree_digest(workdir / "data")
    proc = wm(["collect", "env.game=SonicTheHedgehog-Genesis-v0"], workdir)
    assert_untouched(workdir, before, proc, "python -m stable_retro.import")
    proc = wm(["collect", "env.game=Airstriker-Genesis"], workdir)
    assert_untouched(workdir, before, proc, "unknown game", "Airstriker-Genesis-v0")
    proc = wm(["collect", "collect.frmes=10"], workdir)
    assert_untouched(workdir, before, proc, "Did you mean 'frames'")
    proc = wm(["shard", "shard.chunk_len=abc"], workdir)
    assert_untouched(workdir, before, proc, "shard.chunk_len: expected an integer")


def test_empty_video_dir(workdir):
    (workdir / "videos").mkdir()
    before = tree_digest(workdir / "data")
    proc = wm(["import-videos", "videos", "--out", "data/shards"], workdir)
    assert_untouched(workdir, before, proc, "no .mp4/.avi files")


def test_full_disk_during_checkpoint_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "step": 1})
    import wm.atomic as atomic

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", disk_full)  # the write of the new file fails
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1  # the previous checkpoint, intact
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp litter


def test_unwritable_output_dir_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "step": 1})
    import wm.atomic as atomic

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(PermissionError):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
