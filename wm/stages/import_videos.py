"""Stage import_videos: the videos in ``videos.in_dir`` (mp4/avi, any size and frame rate) ->
action-free shards in ``videos.out_dir``, resampled to the agent's step rate and resized like
rollout frames (``wm.data.video``). A folder without videos gives an empty shard set, so the
pipeline runs the same with or without them; a file ffmpeg cannot read is reported by name and
the others are imported."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from wm.atomic import write_json_atomic
from wm.config import Config
from wm.data.video import import_videos

METRICS_PATH = Path("data/metrics/import_videos.json")


def run(cfg: Config, video_dir: str | None = None, out_dir: str | None = None, fps: float | None = None,
        metrics_path: Path | None = METRICS_PATH) -> dict[str, Any]:
    """The stage (no arguments: the configured folders, empty allowed), or an explicit import
    (``video_dir``: it must hold videos)."""
    v = cfg.videos
    start = time.perf_counter()
    result = import_videos(video_dir or v.in_dir, out_dir or v.out_dir, cfg, fps=fps or v.fps or None,
                           allow_empty=video_dir is None)
    result["wall_s"] = round(time.perf_counter() - start, 2)
    if metrics_path is not None:
        write_json_atomic(metrics_path, result)
    return result
