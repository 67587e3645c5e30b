import json
from pathlib import Path

import numpy as np

from wm.data.episodes import load_episode
from wm.stages.collect import collect_worker


def test_collect_stage_outputs_and_metrics(debug_data):
    cfg = debug_data["cfg"]
    m = debug_data["collect"]
    for key in ("frames", "episodes", "mean_return", "env_steps_per_s", "raw_env_steps_per_s"):
        assert key in m
    assert m["frames"] >= cfg.collect.frames
    assert m["env_steps_per_s"] > 0 and m["raw_env_steps_per_s"] > 0
    manifest = json.loads((Path(cfg.collect.out_dir) / "manifest.json").read_text())
    assert len(manifest["episodes"]) == m["episodes"]
    assert sum(e["length"] for e in manifest["episodes"]) == m["frames"]
    written = json.loads((debug_data["dir"] / "data/metrics/collect.json").read_text())
    assert written["frames"] == m["frames"]
    ep = load_episode(Path(cfg.collect.out_dir) / manifest["episodes"][0]["file"])
    assert ep.frames.shape[1:] == (cfg.env.height, cfg.env.width, 3)
    assert ep.ret == manifest["episodes"][0]["ret"]


def test_worker_reproduces_stage_episodes(debug_data, tmp_path):
    """The same worker function run elsewhere (e.g. a Dask task) gives identical episodes."""
    cfg = debug_data["cfg"]
    c = cfg.collect
    budget = -(-c.frames // c.workers)
    out = collect_worker(cfg.env, c.policy, c.sticky_mean_steps, c.seed, 1, c.workers, budget, str(tmp_path))
    assert out["episodes"], "worker stored nothing"
    for info in out["episodes"]:
        mine = load_episode(tmp_path / info["file"])
        theirs = load_episode(Path(c.out_dir) / info["file"])
        assert np.array_equal(mine.frames, theirs.frames)
        assert np.array_equal(mine.actions, theirs.actions)
        assert np.array_equal(mine.rewards, theirs.rewards)
