import subprocess
import sys

import numpy as np
import pytest

from wm.data.shards import iter_shard, read_manifest, shard_paths
from wm.data.video import decode_video, ffmpeg_exe, import_videos


def make_video(path, size="96x80", rate=30, seconds=2, extra=()):
    """A test-pattern video made by the ffmpeg binary wm uses (H.264 mp4 / MJPEG avi via extra)."""
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


def test_videos_flow_through_the_pipeline(tmp_path, debug_data, debug_raw):
    """H.264 mp4 and MJPEG avi of other sizes and rates, plus a broken file: the import stage
    reports the broken one by name and imports the rest; the tokenizer's batches include video
    frames; cache_latents encodes them beside the rollouts; the dynamics trains on them as
    action-free clips (the "no action" embedding), a step of it runs."""
    import itertools

    import torch

    from conftest import init_tokenizer_and_latents, make_cfg
    from wm.stages import import_videos, train_dynamics
    from wm.training.distributed import DistInfo

    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "h264.mp4", size="160x112", rate=30, seconds=3, extra=("-c:v", "libx264", "-pix_fmt", "yuv420p"))
    make_video(videos / "mjpeg.avi", size="64x48", rate=25, seconds=3, extra=("-c:v", "mjpeg"))
    (videos / "broken.mp4").write_bytes(b"not a video")
    cfg = make_cfg(debug_raw, f"videos.in_dir={videos}", f"videos.out_dir={tmp_path / 'video_shards'}",
                   f"latents.in_dir={debug_data['cfg'].shard.out_dir}", f"shard.out_dir={debug_data['cfg'].shard.out_dir}",
                   f"latents.out_dir={tmp_path / 'latents'}", f"tokenizer.out_dir={tmp_path / 'tok'}")
    result = import_videos.run(cfg, metrics_path=tmp_path / "import_videos.json")
    assert result["videos"] == 2 and [f["file"].endswith("broken.mp4") for f in result["failed"]] == [True]
    assert result["frames"] == 2 * 45  # 3 s each at 15 fps
    from wm.stages.train_tokenizer import tokenizer_batches

    mixed = list(itertools.islice(tokenizer_batches(cfg, DistInfo()), 40))
    share = sum(bool(b["action_free"].all()) for b in mixed) / len(mixed)
    assert 0 < share < 0.5  # video frames are a minority of these frames, but in the batches
    metrics = init_tokenizer_and_latents(tmp_path, cfg)
    chunks = read_manifest(tmp_path / "video_shards")["splits"]
    assert metrics["video_frames"] == sum(n for sp in chunks.values() for e in sp["shards"] for n in e["chunk_lengths"])
    assert read_manifest(tmp_path / "latents" / "videos")["action_free"] is True
    dcfg = make_cfg(debug_raw, f"videos.out_dir={tmp_path / 'video_shards'}", f"latents.out_dir={tmp_path / 'latents'}",
                    "dynamics.video_share=0.5", "dynamics.long_every=0", "dynamics.single_frame_frac=0")
    batches = list(itertools.islice(train_dynamics.batch_schedule(dcfg, DistInfo(), 0), 20))
    free = [b for b in batches if b["action_free"].all()]
    assert 3 <= len(free) <= 17 and all((b["actions"] == -1).all() for b in free)
    # one dynamics step on an action-free batch: finite loss, gradients reach the "no action" row only
    from wm.models.dynamics import Dynamics
    from wm.objectives.shortcut import ShortcutLoss

    model = Dynamics(dcfg.dynamics, len(dcfg.env.action_map), dcfg.tokenizer.n_latents, dcfg.tokenizer.latent_dim)
    loss, _ = ShortcutLoss.from_config(dcfg.dynamics)(model, free[0])
    loss.backward()
    assert torch.isfinite(loss)
    grad = model.action_embed.weight.grad.abs().sum(-1)
    assert grad[-1] > 0 and (grad[:-1] == 0).all()


def test_decode_crops_before_resizing(video_dir):
    """``crop`` [top, bottom, left, right] shares cut the decoded frame as env.crop cuts the
    game's: the middle half of a 64x48 video at its own scale equals rows 12-35 of the whole."""
    whole = decode_video(video_dir / "b.avi", 48, 64, fps=10)
    middle = decode_video(video_dir / "b.avi", 24, 64, fps=10, crop=(0.25, 0.25, 0.0, 0.0))
    assert middle.shape == (10, 24, 64, 3)
    assert np.abs(middle.astype(int) - whole[:, 12:36].astype(int)).mean() < 2


def test_decode_cuts_the_rows_the_env_cuts(video_dir):
    """A share that is no whole number of rows (0.11 of 48 = 5.28) cuts the rows the env's
    crop_frame cuts (5, an odd row of a 4:2:0 video: ffmpeg's crop would move it to 4 and keep
    42), so the video's frame and the game's are the same part of the screen."""
    from wm.envs.retro import crop_frame

    whole = decode_video(video_dir / "b.avi", 48, 64, fps=10).astype(int)
    kept = crop_frame(whole[0], [0.11, 0.0, 0.0, 0.0]).shape[0]
    assert kept == 43
    cut = decode_video(video_dir / "b.avi", kept, 64, fps=10, crop=(0.11, 0.0, 0.0, 0.0)).astype(int)
    error = {top: np.abs(cut - whole[:, top:top + kept]).mean() for top in range(48 - kept + 1)}
    assert min(error, key=error.get) == 48 - kept  # the rows match at the env's offset, no other


def test_import_refuses_a_bad_crop_once_by_name(video_dir, tmp_path, debug_cfg):
    """A crop that leaves no frame is the config's error, raised before any video is decoded
    (not reported as every file failing) and nothing is written."""
    import dataclasses

    from wm.errors import ConfigValueError

    cfg = dataclasses.replace(debug_cfg, env=dataclasses.replace(debug_cfg.env, crop=[0.6, 0.5, 0.0, 0.0]))
    with pytest.raises(ConfigValueError, match="env.crop"):
        import_videos(video_dir, tmp_path / "shards", cfg, fps=15)
    assert not (tmp_path / "shards").exists()
