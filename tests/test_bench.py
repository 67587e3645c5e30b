"""`wm bench` writes every figure the bench promises (debug preset, short measurements)."""

import json

from conftest import make_cfg
from wm.config import to_dict


def test_bench_writes_every_figure(debug_data, tmp_path, monkeypatch):
    from wm import bench

    cfg = make_cfg(to_dict(debug_data["cfg"]))
    monkeypatch.chdir(tmp_path)
    out = bench.run(cfg, seconds=0.3)
    saved = json.loads((tmp_path / bench.BENCH_PATH).read_text())
    k = cfg.dynamics.k_max
    expected = ["tokenizer/train_steps_per_s", "tokenizer/tokens_per_s", "dynamics/train_steps_per_s",
                "dynamics/tokens_per_s", "fps/kv_speedup_k4", "collect/raw_env_steps_per_s",
                "collect/env_steps_per_s_1w", f"collect/env_steps_per_s_{cfg.collect.workers}w",
                "loader/clips_per_s", "loader/headroom", "peak_rss_mb", "wall_s"]
    expected += [f"fps/k{n}_{c}" for n in (1, 4, k) for c in ("kv", "nokv")]
    for key in expected:
        assert key in saved and saved[key] > 0, key
    assert saved == json.loads(json.dumps(out))
