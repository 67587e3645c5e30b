"""The data stages through DVC itself, in a throwaway copy of the repository."""

import pytest
import json
import subprocess
import time

import yaml

from conftest import copy_repo, env_with_venv


def run(cmd, cwd, **kw):
    proc = subprocess.run(cmd, cwd=cwd, env=env_with_venv(), capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes of real stages: a slow or busy 2-core runner must not hit the 600 s default
def test_debug_dvc_pipeline_end_to_end(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], repo)
    # `dvc exp run -S preset=debug` re-composes params.yaml from wm/conf through Hydra
    start = time.perf_counter()
    run(["dvc", "exp", "run", "-S", "preset=debug"], repo)
    elapsed = time.perf_counter() - start
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["preset_name"] == "debug"
    metrics = json.loads((repo / "data/metrics/collect.json").read_text())
    assert metrics["frames"] >= params["collect"]["frames"]
    manifest = json.loads((repo / "data/shards/manifest.json").read_text())
    assert manifest["splits"]["train"]["shards"] and manifest["splits"]["val"]["shards"]
    assert (repo / "dvc.lock").exists()
    tok = json.loads((repo / "data/metrics/tokenizer.json").read_text())
    assert tok["steps"] == params["tokenizer"]["train"]["steps"] and tok["val/psnr"] > 0
    assert (repo / "data/checkpoints/tokenizer/checkpoint.pt").exists()
    dyn = json.loads((repo / "data/metrics/dynamics.json").read_text())
    k, h = params["dynamics"]["sample_steps"], params["dynamics"]["horizon"]
    for key in (f"psnr_h4/k{k}", f"psnr_h{h}/k{k}", "psnr_h4/repeat_last", f"psnr_h{h}/mean_frame",
                f"psnr_h4/k{k}_shuffled_actions", f"fps/k{k}_kv", f"fps/k{k}_nokv", "train_steps_per_s", "params"):
        assert key in dyn, key
    assert (repo / "data/eval/dynamics_rollout.gif").exists()
    assert (repo / "data/latents/manifest.json").exists()
    agent = json.loads((repo / "data/metrics/agent.json").read_text())
    for key in ("val/action_acc/o0", "val/reward_mae", "val/reward_mse", "val/reward_mse_mean_baseline",
                "val/reward_auc"):
        assert key in agent, key
    rl = json.loads((repo / "data/metrics/imagine_rl.json").read_text())
    assert "imagined_return/last" in rl
    ev = json.loads((repo / "data/metrics/evaluate.json").read_text())
    for key in ("return/random", "return/bc", "return/pmpo", "ci95/random", "ci95/bc", "ci95/pmpo", "episodes",
                "fire_rate/random", "fire_rate/never_fire", "fire_rate/fire_every_2", "return/aim_fire_every_2",
                "reward_per_step/imagined/aim_fire_every_2", "reward_per_step/real/aim_fire_every_2",
                "shot_probe_auc/real/lag1", "shot_probe_auc/imagined/lag8", "shot_probe_rows",
                "kills_per_step/real/never_fire", "kills_per_step/imagined/never_fire", "kill_probe/pred_per_step"):
        assert key in ev, key
    assert ev["fire_rate/never_fire"] == 0.0 and 0.5 <= ev["fire_rate/fire_every_2"] < 0.55
    assert ev["kills_per_step/real/never_fire"] == 0.0  # no shot, no kill (a kill is a step with reward > 0)
    assert 0.5 <= ev["fire_rate/aim_fire_every_2"] < 0.55  # it aims, and fires on the same schedule
    assert (repo / "data/eval/returns.png").exists() and (repo / "data/eval/pmpo_episode.gif").exists()
    print(f"debug dvc exp run (all stages): {elapsed:.1f}s")
    # nothing changed: a second repro skips both stages
    out = run(["dvc", "repro"], repo).stdout
    assert "didn't change, skipping" in out and "Running stage" not in out
    # a changed param re-runs only the affected stage
    params["shard"]["chunk_len"] = 16
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro", "shard"], repo).stdout
    assert "Running stage 'shard'" in out and "Running stage 'collect'" not in out
    assert "Running stage 'train_tokenizer'" not in out  # downstream of shard, but not asked for
    assert json.loads((repo / "data/shards/manifest.json").read_text())["chunk_len"] == 16
    # push/pull through the local remote configured in .dvc/config
    run(["dvc", "push"], repo)
    # a version = a commit of dvc.lock; `wm inspect` lists, shows, diffs and fetches versions
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "debug data v1"], repo)
    wm = ["wm", "inspect"]
    out = run([*wm, "versions"], repo).stdout
    assert "debug data v1" in out
    out = run([*wm, "dataset", "--gif", "sample.gif"], repo).stdout
    assert "train" in out and "action histogram" in out and (repo / "sample.gif").stat().st_size > 0
    out = run([*wm, "dataset", "--rev", "HEAD"], repo).stdout
    assert "val" in out
    out = run([*wm, "checkpoint", "tokenizer"], repo).stdout
    assert "parameters" in out and "step" in out
    out = run([*wm, "checkpoint", "dynamics", "--rev", "HEAD"], repo).stdout
    assert "parameters" in out
    out = run([*wm, "diff", "HEAD~1", "HEAD"], repo).stdout
    assert "collect/frames" in out  # new since the copy commit, which had no metrics
    run([*wm, "fetch", "data/shards/manifest.json", "--rev", "HEAD", "--out", str(tmp_path / "m.json")], repo)
    assert json.loads((tmp_path / "m.json").read_text())["kind"] == "frames"
    import shutil

    shutil.rmtree(repo / "data/shards")
    shutil.rmtree(repo / ".dvc/cache")
    run(["dvc", "pull", "shard"], repo)
    assert (repo / "data/shards/manifest.json").exists()
