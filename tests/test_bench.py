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


def test_bench_skips_sections_and_rejects_unknown_ones(debug_cfg, tmp_path):
    """`--skip collect` (a GPU image without the emulator) leaves those figures out and says so."""
    import pytest

    from wm import bench

    out = bench.run(debug_cfg, seconds=0.2, skip=("collect", "loader", "generation"), out=tmp_path / "b.json")
    assert out["skipped"] == ["collect", "generation", "loader"]
    assert out["tokenizer/train_steps_per_s"] > 0 and out["dynamics/train_steps_per_s"] > 0
    assert not any(k.startswith(("collect/", "fps/", "loader/")) for k in out)
    assert json.loads((tmp_path / "b.json").read_text())["skipped"] == out["skipped"]
    # generation runs the benchmarked dynamics model: skipping dynamics skips it too, and says so
    out = bench.run(debug_cfg, seconds=0.1, skip=("collect", "loader", "dynamics", "tokenizer"),
                    out=tmp_path / "d.json")
    assert out["skipped"] == ["collect", "dynamics", "generation", "loader", "tokenizer"]
    with pytest.raises(ValueError, match="unknown section"):
        bench.run(debug_cfg, seconds=0.2, skip=("colect",), out=tmp_path / "c.json")
