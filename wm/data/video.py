"""Import action-free videos (mp4/avi) into the same shard format as game rollouts.

Each file becomes one episode with ``actions == -1`` and ``action_free: true`` in its
metadata, decoded by ffmpeg (through ffmpeg-python), resampled to ``fps`` and resized to
the env's ``height x width``. The dynamics model can train on such clips with its learned
"no action" embedding. A file ffmpeg cannot read is reported by name; the others are
still imported.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from wm.atomic import atomic_dir
from wm.config import NO_CROP, Config, check_crop
from wm.data.episodes import NO_ACTION, Episode, save_episode
from wm.errors import MissingInputError, UserError

VIDEO_SUFFIXES = (".mp4", ".avi")
EMULATOR_FPS = 60.0  # Genesis/NES/SNES run at ~60 frames per second


class VideoError(UserError, ValueError):
    """A video file that could not be decoded."""


def ffmpeg_exe() -> str:
    """A system ffmpeg if there is one, else the binary imageio-ffmpeg ships."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as err:
        raise VideoError("no ffmpeg binary: install imageio-ffmpeg or `apt-get install ffmpeg`") from err


def decode_video(path: str | Path, height: int, width: int, fps: float,
                 crop: list[float] | tuple[float, ...] = NO_CROP) -> np.ndarray:
    """(T, height, width, 3) uint8 frames of ``path`` at ``fps``, the ``crop`` shares [top,
    bottom, left, right] of each frame cut off before the resize (as the env does: ``env.crop``)."""
    import ffmpeg

    path = Path(path)
    stream = ffmpeg.input(str(path)).filter("fps", fps=fps)
    if any(crop):
        # whole pixels per edge, rounded half up as the env's crop_frame rounds them; exact: ffmpeg
        # would otherwise move an odd edge of a chroma-subsampled video (4:2:0, 4:2:2) to an even one
        top, bottom, left, right = (f"floor({n}*{c}+0.5)" for c, n in zip(crop, ("ih", "ih", "iw", "iw")))
        stream = stream.filter("crop", f"iw-{left}-{right}", f"ih-{top}-{bottom}", left, top, exact=1)
    stream = stream.filter("scale", width, height, flags="area").output("pipe:", format="rawvideo", pix_fmt="rgb24")
    try:
        out, _ = stream.run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True, quiet=True)
    except ffmpeg.Error as err:
        lines = (err.stderr or b"").decode(errors="replace").strip().splitlines()
        raise VideoError(f"cannot decode {path}: {lines[-1] if lines else err}") from err
    frame_bytes = height * width * 3
    if len(out) == 0 or len(out) % frame_bytes:
        raise VideoError(f"cannot decode {path}: ffmpeg returned {len(out)} bytes, no whole frames")
    return np.frombuffer(out, np.uint8).reshape(-1, height, width, 3).copy()


def video_episode(path: Path, index: int, height: int, width: int, fps: float,
                  crop: list[float] | tuple[float, ...] = NO_CROP) -> Episode:
    frames = decode_video(path, height, width, fps, crop)
    t = len(frames)
    return Episode(
        frames=frames,
        actions=np.full(t, NO_ACTION, np.int64),
        buttons=np.zeros((t, 0), np.uint8),
        rewards=np.zeros(t, np.float32),
        terminals=np.zeros(t, bool),
        meta={"episode": index, "action_free": True, "source": path.name, "fps": fps},
    )


def import_videos(video_dir: str | Path, out_dir: str | Path, cfg: Config, fps: float | None = None,
                  allow_empty: bool = False) -> dict[str, Any]:
    """Decode every mp4/avi in ``video_dir`` into action-free shards under ``out_dir``. With
    ``allow_empty`` (the pipeline stage) a folder without videos gives an empty shard set."""
    from wm.data.shards import build_shards

    video_dir, out_dir = Path(video_dir), Path(out_dir)
    if not video_dir.is_dir() and not allow_empty:
        raise MissingInputError(f"video directory {video_dir} does not exist")
    files = sorted(p for p in video_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) if video_dir.is_dir() else []
    if not files and not allow_empty:
        raise MissingInputError(f"no {'/'.join(VIDEO_SUFFIXES)} files in {video_dir}")
    check_crop(cfg.env.crop)  # a bad crop is the config's fault, not each video's
    fps = fps or EMULATOR_FPS / cfg.env.frameskip
    failed: list[dict[str, str]] = []
    with atomic_dir(out_dir) as tmp:
        staging = tmp / "_episodes"
        staging.mkdir()
        episodes = []
        for path in files:
            try:
                ep = video_episode(path, len(episodes), cfg.env.height, cfg.env.width, fps, cfg.env.crop)
            except VideoError as err:
                print(f"wm import-videos: error: {err}", file=sys.stderr)
                failed.append({"file": str(path), "error": str(err)})
                continue
            episodes.append((len(episodes), staging / f"ep{len(episodes):06d}.npz"))
            save_episode(ep, episodes[-1][1])
        if files and not episodes:
            raise VideoError(f"none of the {len(files)} video(s) in {video_dir} could be decoded")
        header = {"kind": "frames", "action_free": True, "source": str(video_dir), "fps": fps,
                  "env": {"height": cfg.env.height, "width": cfg.env.width}, "policy": None, "seed": 0,
                  "files": [p.name for p in files], "failed": failed}
        val_fraction = cfg.shard.val_fraction if len(episodes) > 1 else 0.0
        manifest = build_shards(episodes, tmp, chunk_len=cfg.shard.chunk_len,
                                chunks_per_shard=cfg.shard.chunks_per_shard, val_fraction=val_fraction,
                                seed=0, compress_level=cfg.shard.compress_level, header=header)
        shutil.rmtree(staging)
    return {
        "videos": len(episodes),
        "frames": sum(s["frames"] for s in manifest["splits"].values()),
        "fps": fps,
        "out_dir": str(out_dir),
        "failed": failed,
    }
