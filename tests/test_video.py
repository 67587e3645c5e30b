import subprocess
import sys

import numpy as np
import pytest

from wm.data.shards import iter_shard, read_manifest, shard_paths
from wm.data.video import decode_video, ffmpeg_exe, import_videos


def make_video(path, size="96x80", rate=30, seconds=2, extra=()):
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=size={size}:rate={rate}", "-t", str(seconds), *extra, str(path)], check=True)


@pytest.fixture()
def video_dir(tmp_path):
    d = tmp_path / "videos"
    d.mkdir()
    make_video(d / "a.mp4", extra=("-pix_fmt", "yuv420p"))
    make_video(d / "b.avi", size="64x48", rate=25, seconds=1)
    return d


def test_decode_resamples_and_resizes(video_dir):
    frames = decode_video(video_dir / "a.mp4", 64, 64, fps=15)
    assert frames.shape == (30, 64, 64, 3) and frames.dtype == np.uint8
    assert frames.std() > 10  # the test pattern, not black
    avi = decode_video(video_dir / "b.avi", 32, 40, fps=10)
    assert avi.shape == (10, 32, 40, 3)


def test_import_mp4_and_avi_as_action_free_shards(video_dir, tmp_path, debug_cfg):
    (video_dir / "broken.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "shards"
    result = import_videos(video_dir, out, debug_cfg, fps=15)
    assert result["videos"] == 2
    assert [f["file"].endswith("broken.mp4") for f in result["failed"]] == [True]
    manifest = read_manifest(out)
    assert manifest["action_free"] is True
    total = 0
    for split in ("train", "val"):
        if not manifest["splits"][split]["shards"]:
            continue
        for path in shard_paths(out, split):
            for s in iter_shard(path):
                assert s["meta"]["action_free"] is True
                assert (s["actions"] == -1).all()
                assert s["frames"].shape[1:] == (64, 64, 3)
    total = sum(manifest["splits"][s]["frames"] for s in ("train", "val"))
    assert total == 30 + 15  # 2 s and 1 s at 15 fps


def test_cli_import_reports_failures_and_empty_dir(video_dir, tmp_path):
    (video_dir / "broken.avi").write_bytes(b"\x00" * 100)
    proc = subprocess.run([sys.executable, "-m", "wm.cli", "import-videos", str(video_dir), "--preset", "debug",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 1 and "broken.avi" in proc.stderr
    assert (tmp_path / "out" / "manifest.json").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "wm.cli", "import-videos", str(empty), "--preset", "debug",
                           "--out", str(tmp_path / "out2")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no .mp4/.avi files" in proc.stderr
    assert not (tmp_path / "out2").exists()
