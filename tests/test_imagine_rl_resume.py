"""`wm imagine-rl --resume` continues exactly: an interrupted run, resumed, ends with the same
weights and metrics as an uninterrupted one; a non-finite loss stops it with a clear error."""

import json
import os

import pytest
import torch

from conftest import free_port, init_tokenizer_and_latents, make_cfg, save_init_model
from wm.models.agent import Agent
from wm.models.dynamics import Dynamics
from wm.stages import cache_latents, imagine_rl
from wm.training.checkpoint import load_checkpoint
from wm.training.pmpo_learner import PMPOLearner
from wm.training.trainer import CHECKPOINT, NonFiniteLossError


@pytest.fixture(scope="module")
def rl_setup(debug_data, debug_raw, tmp_path_factory):
    base = tmp_path_factory.mktemp("rl")
    cfg = make_cfg(debug_raw, f"latents.in_dir={debug_data['cfg'].shard.out_dir}", f"latents.out_dir={base / 'latents'}",
                   f"tokenizer.out_dir={base / 'tok'}", f"agent.out_dir={base / 'agent'}", "rl.iterations=6",
                   "rl.ckpt_every=2", "rl.value_warmup=1", "rl.guard_low=0.0", "rl.guard_high=1.0")
    init_tokenizer_and_latents(base, cfg)
    dyn = Dynamics(cfg.dynamics, len(cfg.env.action_map), cfg.tokenizer.n_latents, cfg.tokenizer.latent_dim)
    agent = Agent(dyn, n_tasks=1, mtp=cfg.agent.mtp, bins=cfg.agent.bins)
    torch.nn.init.normal_(agent.frame_reward_head[-1].weight)  # a reward to learn from
    save_init_model(base / "agent", agent, cfg)
    return base, cfg


def _run(base, cfg, out, resume=False):
    from dataclasses import replace

    cfg = replace(cfg, rl=replace(cfg.rl, out_dir=str(base / out)))
    os.makedirs(base / out, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(base / out)  # metrics land under <out>/data/metrics
    try:
        return imagine_rl.run(cfg, resume=resume)
    finally:
        os.chdir(cwd)


def test_interrupted_run_resumes_to_the_same_result(rl_setup, monkeypatch):
    base, cfg = rl_setup
    ref = _run(base, cfg, "ref")
    real_update = PMPOLearner.update
    calls = {"n": 0}

    def crash_at_5(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return real_update(self, *args, **kwargs)

    monkeypatch.setattr(PMPOLearner, "update", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        _run(base, cfg, "kill")
    assert load_checkpoint(base / "kill" / CHECKPOINT)["step"] == 4  # the last periodic checkpoint
    monkeypatch.setattr(PMPOLearner, "update", real_update)
    got = _run(base, cfg, "kill", resume=True)
    a, b = load_checkpoint(base / "ref" / CHECKPOINT), load_checkpoint(base / "kill" / CHECKPOINT)
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    drop = {"wall_s"}
    assert {k: v for k, v in ref.items() if k not in drop} == {k: v for k, v in got.items() if k not in drop}
    assert json.loads((base / "kill" / "data/metrics/imagine_rl.json").read_text())["rl/policy_steps"] == 5


def test_non_finite_loss_stops_with_a_clear_error(rl_setup, monkeypatch):
    base, cfg = rl_setup
    real_update = PMPOLearner.update

    def nan_update(self, *args, **kwargs):
        logs = real_update(self, *args, **kwargs)
        return {**logs, "rl/value_loss": float("nan")} if self.iteration == 3 else logs

    monkeypatch.setattr(PMPOLearner, "update", nan_update)
    with pytest.raises(NonFiniteLossError, match="iteration 3"):
        _run(base, cfg, "nan")
    assert load_checkpoint(base / "nan" / CHECKPOINT)["step"] == 2


def test_stages_place_models_and_generators_on_compute_device(rl_setup, monkeypatch):
    """Latents and imagination RL ask ``compute_device()`` and hand its answer to every model
    load (their generators follow the loaded model's device). On CPU a distinguishable
    ``cpu:0`` stands in for a GPU."""
    from wm import world_model
    from wm.training import distributed

    base, cfg = rl_setup
    target = torch.device("cpu", 0)
    seen = []
    for mod in (cache_latents, distributed):  # imagine_rl asks through init_distributed
        monkeypatch.setattr(mod, "compute_device", lambda local_rank=0: target)
    real_world, real_tok = world_model.WorldModel.load.__func__, cache_latents.load_tokenizer

    def world_load(cls, *args, device=None, **kwargs):
        seen.append(("world", device))
        return real_world(cls, *args, device=device, **kwargs)

    def tok_load(path, device=None):
        seen.append(("tokenizer", device))
        return real_tok(path, device)

    monkeypatch.setattr(world_model.WorldModel, "load", classmethod(world_load))
    monkeypatch.setattr(cache_latents, "load_tokenizer", tok_load)
    from dataclasses import replace

    cwd = os.getcwd()
    os.chdir(base)
    try:
        cache_latents.run(replace(cfg, latents=replace(cfg.latents, out_dir=str(base / "latents_dev"))))
    finally:
        os.chdir(cwd)
    _run(base, replace(cfg, rl=replace(cfg.rl, iterations=2)), "dev")
    kinds = {k for k, _ in seen}
    assert kinds == {"world", "tokenizer"}
    assert all(d == target for _, d in seen), seen


def test_compute_device_reads_wm_device(monkeypatch):
    from wm.errors import ConfigValueError
    from wm.training.distributed import compute_device

    monkeypatch.delenv("WM_DEVICE", raising=False)
    assert compute_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu", 0 if torch.cuda.is_available() else None)
    monkeypatch.setenv("WM_DEVICE", "cpu")
    assert compute_device() == torch.device("cpu")
    monkeypatch.setenv("WM_DEVICE", "gpu0")
    with pytest.raises(ConfigValueError, match="WM_DEVICE"):
        compute_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("WM_DEVICE", "cuda")
        with pytest.raises(ConfigValueError, match="not available"):
            compute_device()


def _rl_rank(rank: int, world: int, port: int, base: str, cfg) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from pathlib import Path

    _run(Path(base), cfg, "ddp")


@pytest.mark.slow
def test_imagine_rl_runs_under_two_ranks(rl_setup):
    """`torchrun --nproc_per_node 2 -m wm.cli imagine-rl`: two gloo ranks imagine their own
    trajectories, step together (the learner's equality with one process: test_pmpo_learner.py),
    and rank 0 alone writes the checkpoint and the metrics."""
    import torch.multiprocessing as mp

    base, cfg = rl_setup
    port = free_port()
    mp.spawn(_rl_rank, args=(2, port, str(base), cfg), nprocs=2, join=True)
    ckpt = load_checkpoint(base / "ddp" / CHECKPOINT)
    metrics = json.loads((base / "ddp" / "data/metrics/imagine_rl.json").read_text())
    assert ckpt["step"] == cfg.rl.iterations == metrics["iterations"]
    assert 0.0 <= metrics["rl/pos_adv_frac_mean"] <= 1.0
