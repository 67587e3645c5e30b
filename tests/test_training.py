import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import free_port
from wm.config import TrainConfig
from wm.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from wm.training.trainer import NonFiniteLossError, Trainer, load_trained

TRAIN = TrainConfig(steps=3, batch_size=8, clip_len=1, lr=1e-2, min_lr_ratio=0.1, warmup=1, weight_decay=0.01,
                    grad_clip=10.0, log_every=1, eval_every=100, ckpt_every=1, seed=0, num_workers=0,
                    precision="fp32", compile=False, distributed="none", wandb="disabled", threads=1)

torch.manual_seed(123)
X = torch.randn(6, 8, 5)  # 6 steps of a combined batch of 8
Y = torch.randn(6, 8, 3)


def toy_model() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def mse_loss(model, batch):
    loss = (model(batch["x"]) - batch["y"]).pow(2).mean()
    return loss, {"toy/train/loss": loss.item()}


def noisy_loss(model, batch):
    """Draws from the global RNG every step, as the shortcut loss draws noise levels and noise."""
    loss = (model(batch["x"] + 0.1 * torch.randn_like(batch["x"])) - batch["y"]).pow(2).mean()
    return loss, {"toy/train/loss": loss.item()}


def data_for(rank: int, world: int):
    def factory(info, skip):
        def gen():
            # lazily, at the first batch, like a DataLoader drawing its workers' base seed
            torch.randint(0, 2**31, ())
            for i in range(skip, len(X)):
                yield {"x": X[i, rank::world], "y": Y[i, rank::world]}
        return gen()
    return factory


def make_trainer(out: Path, cfg: TrainConfig, rank: int = 0, world: int = 1, loss=mse_loss) -> Trainer:
    return Trainer(name="toy", cfg=cfg, model_factory=toy_model, loss_fn=loss, data_factory=data_for(rank, world),
                   out_dir=out, run_config={"toy": 1}, live_dir=out / "live")


def _ddp_worker(rank: int, world: int, port: int, out: str, mode: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    cfg = dataclasses.replace(TRAIN, distributed=mode)
    make_trainer(Path(out), cfg, rank, world).fit()


def _run_two_ranks(tmp_path: Path, mode: str) -> dict:
    import torch.multiprocessing as mp

    out = tmp_path / mode
    mp.spawn(_ddp_worker, args=(2, free_port(), str(out), mode), nprocs=2, join=True)
    return load_checkpoint(out / "checkpoint.pt")


def test_ddp_step_equals_single_process_on_combined_batch(tmp_path):
    single = make_trainer(tmp_path / "single", TRAIN)
    single.fit()
    ref = load_checkpoint(tmp_path / "single" / "checkpoint.pt")
    ddp = _run_two_ranks(tmp_path, "ddp")
    assert ddp["step"] == ref["step"] == 3
    for k in ref["model"]:
        torch.testing.assert_close(ddp["model"][k], ref["model"][k], atol=1e-6, rtol=1e-5)


def test_fsdp_wraps_and_trains_on_cpu(tmp_path):
    """FSDP2 (fully_shard) on gloo, 2 ranks: any failure fails the test (only a torch without
    FSDP2 skips it)."""
    pytest.importorskip("torch.distributed.fsdp", reason="this torch build has no FSDP")
    from torch.distributed.fsdp import fully_shard  # noqa: F401  (FSDP2; ImportError = a torch too old)

    ckpt = _run_two_ranks(tmp_path, "fsdp")
    ref_trainer = make_trainer(tmp_path / "single", TRAIN)
    ref_trainer.fit()
    ref = load_checkpoint(tmp_path / "single" / "checkpoint.pt")
    assert ckpt["step"] == 3
    for k in ref["model"]:  # sharded gradients average like DDP's, so the result matches too
        torch.testing.assert_close(ckpt["model"][k], ref["model"][k], atol=1e-5, rtol=1e-4)


def test_resume_continues_exactly(tmp_path):
    """Same weights and losses as the uninterrupted run, with a loss that draws noise every step
    and a loader that draws from the global RNG when it starts (after the restore, a resumed run
    would take different noise from then on)."""
    full = make_trainer(tmp_path / "full", dataclasses.replace(TRAIN, steps=6), loss=noisy_loss)
    full.fit()
    # "interrupted" after step 3 (its checkpoint is what a kill would leave), then resumed
    first = make_trainer(tmp_path / "part", dataclasses.replace(TRAIN, steps=6), loss=noisy_loss)
    first.cfg = dataclasses.replace(first.cfg, steps=6)

    class Stop(Exception):
        pass

    def stop_after_3(info, skip):
        it = data_for(0, 1)(info, skip)
        for i, batch in enumerate(it):
            if skip + i == 3:
                raise Stop
            yield batch

    first.data_factory = stop_after_3
    with pytest.raises(Stop):
        first.fit()
    earlier = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["elapsed_s"]  # the killed process's time
    resumed = make_trainer(tmp_path / "part", dataclasses.replace(TRAIN, steps=6), loss=noisy_loss)
    result = resumed.fit(resume=True)
    assert earlier > 0 and result["earlier_processes_s"] == earlier  # a stage adds it to its wall time
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["toy/train/loss"] for h in full.history[3:]] == [h["toy/train/loss"] for h in resumed.history]


def test_init_from_warm_starts_a_fresh_run(tmp_path):
    """train.init_from: the new run starts from the other run's weights, with step 0 and a fresh
    optimizer; a missing checkpoint is a clear error."""
    first = make_trainer(tmp_path / "a", TRAIN)
    first.fit()
    trained = {k: v.clone() for k, v in first.model.state_dict().items()}
    warm_cfg = dataclasses.replace(TRAIN, steps=0, init_from=str(tmp_path / "a"))
    warm = make_trainer(tmp_path / "b", warm_cfg)
    warm.fit()
    for k, v in warm.model.state_dict().items():
        assert torch.equal(v, trained[k]), k
    cold = make_trainer(tmp_path / "c", dataclasses.replace(TRAIN, steps=0))
    cold.fit()
    assert not all(torch.equal(v, trained[k]) for k, v in cold.model.state_dict().items())
    one = make_trainer(tmp_path / "d", dataclasses.replace(TRAIN, steps=1, init_from=str(tmp_path / "a")))
    one.fit()
    assert load_checkpoint(tmp_path / "d" / "checkpoint.pt")["step"] == 1  # its own count, not 3 + 1
    with pytest.raises(CheckpointError, match="init_from"):
        make_trainer(tmp_path / "e", dataclasses.replace(TRAIN, init_from=str(tmp_path / "nope"))).fit()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def nan_at_3(model, batch):
        loss, logs = mse_loss(model, batch)
        if nan_at_3.calls == 3:
            loss = loss * float("nan")
        nan_at_3.calls += 1
        return loss, logs

    nan_at_3.calls = 0
    trainer = make_trainer(tmp_path, dataclasses.replace(TRAIN, steps=6), loss=nan_at_3)
    with pytest.raises(NonFiniteLossError, match="step 3.*Last good checkpoint.*step 3"):
        trainer.fit()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_checkpoint_is_atomic_and_safe(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "step": 1}, {"a": 1})
    assert (tmp_path / "config.yaml").read_text().strip() == "a: 1"
    assert not list(tmp_path.glob(".*tmp*"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_wrong_shape_checkpoint_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"model": {"0.weight": torch.ones(2, 2)}})
    with pytest.raises(CheckpointError, match="does not fit"):
        load_trained(toy_model(), tmp_path / "c.pt")


def test_weights_fingerprint_ignores_all_but_the_weights(tmp_path):
    """weights_sha256: the same for the same weights in another order and beside other state
    (optimizer, step), scalars and empty tensors included; another value, name or dtype changes
    it; a checkpoint without weights is a clear error."""
    from wm.training.checkpoint import weights_sha256

    w = {"w": torch.arange(6.0).reshape(2, 3), "s": torch.tensor(3.0), "e": torch.zeros(0)}
    save_checkpoint(tmp_path / "a.pt", {"model": w})
    save_checkpoint(tmp_path / "b.pt", {"model": dict(reversed(list(w.items()))), "optimizer": {"x": 1}, "step": 9})
    assert weights_sha256(tmp_path / "a.pt") == weights_sha256(tmp_path / "b.pt")
    for other in ({**w, "s": torch.tensor(3.5)}, {**w, "w": w["w"].double()}, {"v": w["w"], "s": w["s"], "e": w["e"]}):
        save_checkpoint(tmp_path / "c.pt", {"model": other})
        assert weights_sha256(tmp_path / "c.pt") != weights_sha256(tmp_path / "a.pt")
    save_checkpoint(tmp_path / "d.pt", {"step": 1})
    with pytest.raises(CheckpointError, match="holds no model weights"):
        weights_sha256(tmp_path / "d.pt")


def test_train_tokenizer_stage_outputs(debug_data, monkeypatch):
    from conftest import make_cfg
    from wm.stages import train_tokenizer

    base = debug_data["dir"]
    raw = __import__("wm.config", fromlist=["to_dict"]).to_dict(debug_data["cfg"])
    cfg = make_cfg(raw, f"tokenizer.out_dir={base / 'tok'}")
    monkeypatch.chdir(base)
    metrics = train_tokenizer.run(cfg)
    EVAL_BATCH = train_tokenizer.EVAL_BATCH
    for key in ("val/psnr", "val/ssim", "val/mse", "val/lpips", "lpips_pretrained", "train_steps_per_s", "params",
                "val/avgpool2_psnr", "val/psnr_moving", "val/avgpool2_psnr_moving", "val/repeat_psnr_moving"):
        assert key in metrics, key
    # the default perceptual net ships in its wheel: pretrained offline, and reported
    assert metrics["lpips_pretrained"] is True and metrics["lpips_net"] == "stlpips_alex"
    assert metrics["val/lpips"] > 0
    # the perceptual net scores every 4th held-out batch (the first of the debug preset's 2)
    assert metrics["val/lpips_frames"] == EVAL_BATCH * cfg.tokenizer.train.clip_len
    assert (base / "data/eval/tokenizer_moving.png").stat().st_size > 0
    assert json.loads((base / "data/metrics/tokenizer.json").read_text())["params"] == metrics["params"]
    assert (base / "data/eval/tokenizer_recon.png").stat().st_size > 0
    assert (base / "tok/checkpoint.pt").exists() and (base / "tok/config.yaml").exists()
    assert list((base / "data/metrics/tokenizer/plots/metrics").rglob("loss.tsv"))


def test_compile_blocks_compiles_each_block_not_the_whole_model(debug_cfg):
    """Regional compilation: every transformer block gets its compiled call, the model itself
    does not (so a new input shape recompiles one block, not the whole graph); eager backend
    here, the wiring is what is tested."""
    import torch._dynamo

    from wm.models.dynamics import Dynamics
    from wm.models.transformer import Block
    from wm.training.trainer import compile_blocks

    t = debug_cfg.tokenizer
    model = Dynamics(debug_cfg.dynamics, len(debug_cfg.env.action_map), t.n_latents, t.latent_dim)
    inputs = (torch.tanh(torch.randn(1, 2, t.n_latents, t.latent_dim)), torch.full((1, 2), 0.5),
              torch.full((1, 2), 0.25), torch.zeros(1, 2, dtype=torch.long))
    before = model(*inputs)
    original = nn.Module.compile

    def eager_compile(self, *args, **kwargs):
        return original(self, *args, backend="eager", **kwargs)

    torch._dynamo.reset()
    try:
        nn.Module.compile = eager_compile
        n = compile_blocks(model, (Block,))
    finally:
        nn.Module.compile = original
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert n == len(blocks) == debug_cfg.dynamics.model.depth
    assert all(m._compiled_call_impl is not None for m in blocks) and model._compiled_call_impl is None
    assert torch._dynamo.config.recompile_limit >= 64
    torch.testing.assert_close(model(*inputs), before)  # same function, now through the compiled blocks
    # evaluation and generation run the same blocks eagerly (a new shape every step), then the
    # compiled calls come back for training
    from wm.training.trainer import eager_blocks

    impls = [m._compiled_call_impl for m in blocks]
    with eager_blocks(model):
        assert all(m._compiled_call_impl is None for m in blocks)
        torch.testing.assert_close(model(*inputs), before)
    assert [m._compiled_call_impl for m in blocks] == impls


def _stage_parts(which: str):
    """(model factory, loss, batch maker) of a training stage at debug sizes, without data files."""
    from wm import config as config_mod
    from wm.models.agent import Agent
    from wm.models.dynamics import Dynamics
    from wm.objectives.mae import TokenizerLoss
    from wm.objectives.shortcut import ShortcutLoss
    from wm.stages.finetune_agent import AgentLoss, agent_for_finetuning
    from wm.stages.train_tokenizer import build_tokenizer

    cfg = config_mod.from_dict(config_mod.Config, config_mod.compose("debug"))
    n_act, n_lat, dz = len(cfg.env.action_map), cfg.tokenizer.n_latents, cfg.tokenizer.latent_dim

    def latents(g: torch.Generator, b: int) -> dict:
        t = 4
        return {"latents": torch.rand(b, t, n_lat, dz, generator=g) * 2 - 1,
                "actions": torch.randint(0, n_act, (b, t), generator=g),
                "rewards": (torch.rand(b, t, generator=g) < 0.3).float() * 20,
                "continues": (torch.rand(b, t, generator=g) > 0.1).float()}

    if which == "tokenizer":
        h, w = cfg.env.height, cfg.env.width
        return (lambda: build_tokenizer(cfg), TokenizerLoss(cfg.tokenizer, None),
                lambda g, b: {"frames": torch.randint(0, 256, (b, 2, 3, h, w), generator=g, dtype=torch.uint8)})
    if which == "dynamics":
        return lambda: Dynamics(cfg.dynamics, n_act, n_lat, dz), ShortcutLoss.from_config(cfg.dynamics), latents
    assert which == "agent"
    return (lambda: agent_for_finetuning(Agent(Dynamics(cfg.dynamics, n_act, n_lat, dz), n_tasks=1, mtp=cfg.agent.mtp,
                                               bins=cfg.agent.bins)), AgentLoss(cfg), latents)


class _Seeded(nn.Module):
    """A stage loss whose random draws (masks, noise levels, noise) are fixed per (rank, call),
    so a DDP rank and the single-process reference draw the same for the same half-batch."""

    def __init__(self, loss, rank: int):
        super().__init__()
        self.loss, self.rank, self.calls = loss, rank, 0

    def forward(self, model, batch):
        torch.manual_seed(10_000 + 100 * self.rank + self.calls)
        self.calls += 1
        return self.loss(model, batch)


class _Combined(nn.Module):
    """One process on the combined batch: the mean of the two halves' losses, each half with
    its own loss state (running RMS), as each DDP rank holds its own."""

    def __init__(self, halves):
        super().__init__()
        self.halves = nn.ModuleList(halves)

    def forward(self, model, batch):
        results = [h(model, batch[f"r{r}"]) for r, h in enumerate(self.halves)]
        return sum(loss for loss, _ in results) / len(results), results[0][1]


def _stage_batches(make, rank: int, n: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    return [make(g, 2) for _ in range(n)]


STAGE_TRAIN = dataclasses.replace(TRAIN, steps=2, ckpt_every=2)


def _stage_ddp_worker(rank: int, world: int, port: int, out: str, which: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    factory, loss, make = _stage_parts(which)
    batches = _stage_batches(make, rank)
    trainer = Trainer(name=which, cfg=dataclasses.replace(STAGE_TRAIN, distributed="ddp"), model_factory=factory,
                      loss_fn=_Seeded(loss, rank), data_factory=lambda info, skip: iter(batches[skip:]),
                      out_dir=Path(out), run_config={"t": 1}, live_dir=Path(out) / f"live{rank}")
    trainer.fit()
    torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("which", ["tokenizer", "dynamics", "agent"])
def test_ddp_step_equals_single_process_for_every_stage_model(tmp_path, which):
    """Each training stage's model and loss under 2-rank DDP (gloo) against one process on the
    combined batch (the mean of the two halves' losses, the same random draws per half): after
    2 steps (a parameter the loss never reaches would stop DDP at its second step) both ranks
    hold the reference's weights, which moved from the start."""
    import torch.multiprocessing as mp

    factory, _, make = _stage_parts(which)
    torch.manual_seed(TRAIN.seed)
    start = factory().state_dict()
    halves = [_stage_batches(make, r) for r in (0, 1)]
    combined = [{"r0": a, "r1": b} for a, b in zip(*halves)]
    ref = Trainer(name=which, cfg=STAGE_TRAIN, model_factory=factory,
                  loss_fn=_Combined([_Seeded(_stage_parts(which)[1], r) for r in (0, 1)]),
                  data_factory=lambda info, skip: iter(combined[skip:]), out_dir=tmp_path / "single",
                  run_config={"t": 1}, live_dir=tmp_path / "single" / "live")
    ref.fit()
    want = ref.model.state_dict()
    mp.spawn(_stage_ddp_worker, args=(2, free_port(), str(tmp_path / "ddp"), which), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
        torch.testing.assert_close(a[k], want[k], atol=1e-5, rtol=1e-4)
    assert any(not torch.equal(a[k], start[k]) for k in a if a[k].is_floating_point())


def test_compile_without_cpu_compiler_warns_and_stays_eager(monkeypatch):
    """The default preset compiles the dynamics trainer; a CPU machine without a C++ compiler must
    train eagerly with a warning rather than fail at the first step."""
    import shutil

    from wm.models.transformer import Block
    from wm.training.trainer import compile_blocks, cpu_compiler_ready

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert cpu_compiler_ready(model) is bool(shutil.which("g++"))  # this machine: g++ is inductor's default
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        assert compile_blocks(model, (Block,)) == 0
    assert getattr(model, "_compiled_call_impl", None) is None
