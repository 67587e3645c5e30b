import json
from pathlib import Path

import numpy as np

from conftest import make_cfg
from wm.config import to_dict
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


def test_dask_collection_gives_the_same_episodes(debug_data, tmp_path, monkeypatch):
    """collect.backend=dask (one Dask task per worker, local cluster) stores the same episodes."""
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
