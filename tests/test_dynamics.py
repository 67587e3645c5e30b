import dataclasses
import math

import pytest
import torch

from wm.models.dynamics import Dynamics, shift_actions
from wm.objectives.shortcut import ShortcutLoss, bootstrap_velocity, forcing_rows, sample_shortcut, shortcut_terms
from wm.world_model import rollout


@pytest.fixture()
def dyn_cfg(debug_cfg):
    return debug_cfg.dynamics


def make_model(dyn_cfg, dyn_kw=None, **model_kw) -> Dynamics:
    torch.manual_seed(0)
    cfg = dataclasses.replace(dyn_cfg, model=dataclasses.replace(dyn_cfg.model, **model_kw)) if model_kw else dyn_cfg
    cfg = dataclasses.replace(cfg, **dyn_kw) if dyn_kw else cfg
    return Dynamics(cfg, n_actions=10, n_latents=4, latent_dim=3).eval()


VARIANTS = [{"prev_input": False}, {"prev_input": True}, {"pack": 2, "prev_input": True}, {"pack": 4, "prev_input": False}]


def test_sample_shortcut_grid():
    torch.manual_seed(0)
    tau, d = sample_shortcut(4096, 3, 64, torch.device("cpu"))
    assert d.shape == (4096, 3) and torch.equal(d, d[:, :1].expand_as(d))  # one step size per sample
    k = -torch.log2(d[:, 0])
    assert torch.equal(k, k.round()) and k.min() == 0 and k.max() == 6
    assert set(k.long().tolist()) == set(range(7))  # k ~ U{0..log2 Kmax}
    on_grid = tau / d
    assert torch.allclose(on_grid, on_grid.round())
    assert (tau >= 0).all() and (tau <= 1 - d + 1e-9).all()
    assert (tau[:, 0] != tau[:, 1]).any()  # per time step


def test_context_frames_sit_at_the_sampler_level():
    torch.manual_seed(0)
    tau_ctx = 58 / 64
    tau, d = sample_shortcut(4096, 4, 64, torch.device("cpu"), context_frac=0.5, tau_ctx=tau_ctx)
    ctx = (tau == tau_ctx) & (d == 1 / 64)
    assert 0.45 < ctx.float().mean().item() < 0.55
    rest = ~ctx
    assert torch.allclose(tau[rest] / d[rest], (tau[rest] / d[rest]).round())  # the others stay on their grid


def test_forcing_rows_are_next_frame_prediction():
    torch.manual_seed(0)
    tau, d = sample_shortcut(64, 8, 64, torch.device("cpu"), 0.5, 0.9)
    t2, d2, w2 = forcing_rows(tau, d, 0.5, 0.9, 64)
    redrawn = (t2 != tau).any(1) | (d2 != d).any(1)
    kept = ~redrawn
    assert 10 < int(redrawn.sum()) < 54  # about half the rows
    forced = torch.zeros(64, dtype=torch.bool)
    for i in range(64):  # a row is forced iff every frame sits at {0, tau_ctx} with d_min
        forced[i] = bool(((t2[i] == 0) | (t2[i] == 0.9)).all() and (d2[i] == 1 / 64).all())
    assert forced[redrawn].all()
    torch.testing.assert_close(w2[forced], (t2[forced] == 0).float())  # targets 1, context 0
    targets = t2[forced] == 0
    assert not targets[:, 0].any() and not (targets[:, 1:] & targets[:, :-1]).any()  # each after a context frame
    assert 0.25 < targets.float().mean().item() < 0.42  # ~1/3 of the frames
    torch.testing.assert_close(w2[kept], 0.9 * tau[kept] + 0.1)  # other rows: the paper's ramp
    assert torch.equal(t2[kept], tau[kept]) and torch.equal(d2[kept], d[kept])
    # off, or single frames (no past): the paper's levels and ramp
    for frac, t in ((0.0, 8), (1.0, 1)):
        tau1, d1 = sample_shortcut(4, t, 64, torch.device("cpu"))
        t3, d3, w3 = forcing_rows(tau1, d1, frac, 0.9, 64)
        assert torch.equal(t3, tau1) and torch.equal(d3, d1)
        torch.testing.assert_close(w3, 0.9 * tau1 + 0.1)


def test_bootstrap_keeps_context_frames_fixed():
    """Per-frame d: a flow (context) frame keeps its input, level and step in both half steps."""
    seen = []

    def f(z, tau, d, a):
        seen.append((z.clone(), tau.clone(), d.clone()))
        return z * (1 + tau[..., None, None]) + d[..., None, None]

    z = torch.tensor([[[[0.5]], [[0.5]]]])  # (B=1, T=2, L=1, dz=1)
    tau = torch.tensor([[58 / 64, 0.25]])
    d = torch.tensor([[1 / 64, 0.5]])
    boot = torch.tensor([[False, True]])
    v_star = bootstrap_velocity(f, z, tau, d, torch.zeros(1, 2, dtype=torch.long), boot)
    for zz, tt, dd in seen:  # frame 0 untouched in both passes
        assert zz[0, 0].item() == 0.5 and tt[0, 0].item() == 58 / 64 and dd[0, 0].item() == 1 / 64
    b1 = 0.5 * 1.25 + 0.25
    v1 = (b1 - 0.5) / 0.75
    z_mid = 0.5 + v1 * 0.25
    v2 = (z_mid * 1.5 + 0.25 - z_mid) / 0.5
    assert v_star[0, 1].item() == pytest.approx((v1 + v2) / 2)
    err, is_flow, is_boot = shortcut_terms(f, z, z, tau, d, torch.zeros(1, 2, dtype=torch.long), d_min=1 / 64)
    assert is_flow.tolist() == [[True, False]] and is_boot.tolist() == [[False, True]]
    pred0 = 0.5 * (1 + 58 / 64) + 1 / 64
    assert err[0, 0].item() == pytest.approx((pred0 - 0.5) ** 2)  # flow loss on the context frame


def test_shift_actions():
    a = torch.tensor([[3, 4, 5]])
    assert shift_actions(a).tolist() == [[-1, 3, 4]]


def test_bootstrap_target_matches_hand_computation():
    """f(z, tau, d, a) = z * (1 + tau) + d is simple enough to do the two half steps by hand."""

    def f(z, tau, d, a):
        d = d[:, None] if d.ndim == 1 else d
        return z * (1 + tau[..., None, None]) + d[..., None, None]

    z = torch.tensor([[[[0.5]]]])  # (B=1, T=1, L=1, dz=1)
    tau = torch.tensor([[0.25]])
    d = torch.tensor([0.5])
    a = torch.zeros(1, 1, dtype=torch.long)
    # by hand: half = 0.25
    b1 = 0.5 * 1.25 + 0.25  # 0.875
    v1 = (b1 - 0.5) / 0.75  # 0.5
    z_mid = 0.5 + v1 * 0.25  # 0.625
    b2 = z_mid * 1.5 + 0.25  # 1.1875
    v2 = (b2 - z_mid) / 0.5  # 1.125
    v_star = bootstrap_velocity(f, z, tau, d, a)
    assert v_star.item() == pytest.approx((v1 + v2) / 2)
    # and the loss term: z~ = (1 - tau) z0 + tau z1 with z0 = z1 = 0.5 gives z~ = 0.5
    err, is_flow, boot = shortcut_terms(f, z, z, tau, d, a, d_min=1 / 64)
    pred = 0.5 * 1.25 + 0.5  # f at full step d = 0.5
    v_hat = (pred - 0.5) / 0.75
    assert boot.item() and not is_flow.item()
    assert err.item() == pytest.approx(0.75**2 * (v_hat - (v1 + v2) / 2) ** 2, rel=1e-5)  # float32
    # the smallest step is plain flow matching against the clean latents
    err, is_flow, _ = shortcut_terms(f, z, torch.zeros_like(z), tau, torch.tensor([1 / 64]), a, d_min=1 / 64)
    z_t = 0.25 * 0.5
    assert is_flow.item() and err.item() == pytest.approx((z_t * 1.25 + 1 / 64 - 0.5) ** 2)


def test_loss_weights_and_backward(dyn_cfg):
    model = make_model(dyn_cfg).train()
    batch = {"latents": torch.tanh(torch.randn(3, 4, 4, 3)), "actions": torch.randint(0, 10, (3, 4)),
             "action_free": torch.tensor([False, True, False])}
    loss, logs = ShortcutLoss(dyn_cfg.k_max, 0.5, 0.1, forcing_frac=0.5)(model, batch)
    loss.backward()
    assert math.isfinite(loss.item()) and model.latent_in.weight.grad is not None
    assert logs["dynamics/train/clip_len"] == 4


@pytest.mark.parametrize("dyn_kw", VARIANTS)
def test_dynamics_is_block_causal(dyn_cfg, dyn_kw):
    model = make_model(dyn_cfg, dyn_kw)
    z = torch.randn(2, 5, 4, 3)
    tau = torch.rand(2, 5)
    d = torch.full((2,), 0.25)
    a = torch.randint(-1, 10, (2, 5))
    out = model(z, tau, d, a)
    z2, a2 = z.clone(), a.clone()
    z2[:, 3:] = torch.randn(2, 2, 4, 3)
    a2[:, 3:] = (a2[:, 3:] + 1) % 10
    out2 = model(z2, tau, d, a2)
    assert torch.equal(out[:, :3], out2[:, :3])
    assert not torch.allclose(out[:, 3:], out2[:, 3:])
    # actions matter for the frame they lead to
    a3 = a.clone()
    a3[:, 2] = (a3[:, 2] + 3) % 10
    assert not torch.allclose(model(z, tau, d, a3)[:, 2], out[:, 2])


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("dyn_kw", VARIANTS)
def test_kv_cached_sampling_equals_uncached(dyn_cfg, steps, dyn_kw):
    model = make_model(dyn_cfg, dyn_kw)
    ctx = torch.tanh(torch.randn(2, 3, 4, 3))
    prev_ctx = torch.randint(-1, 10, (2, 3))
    prev_future = torch.randint(0, 10, (2, 5))
    runs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(1)
        runs.append(rollout(model, ctx, prev_ctx, prev_future, steps, 0.1, use_cache=use_cache, generator=g))
    assert runs[0].shape == (2, 5, 4, 3)
    # float32, different association order of the same sums: agree to 1e-4
    torch.testing.assert_close(runs[0], runs[1], atol=1e-4, rtol=1e-4)


def test_packing_and_previous_frame_input(dyn_cfg):
    """pack: 4 latents -> 2 spatial tokens of 2 * 3 values, unpacked on output; prev_input:
    frame t's tokens see frame t-1's input latents before any temporal block (none here:
    time_every = 0 leaves frames independent except through that input)."""
    model = make_model(dyn_cfg, {"pack": 2, "prev_input": True}, time_every=0)
    assert model.tokens_per_step == 2 + 2 and model.latent_in.in_features == 6
    z = torch.randn(1, 3, 4, 3)
    tau, d, a = torch.rand(1, 3), torch.full((1,), 0.25), torch.randint(0, 10, (1, 3))
    out = model(z, tau, d, a)
    assert out.shape == z.shape
    z2 = z.clone()
    z2[:, 0] = torch.randn(4, 3)
    out2 = model(z2, tau, d, a)
    assert not torch.allclose(out[:, 1], out2[:, 1])  # frame 1 sees frame 0's latents
    torch.testing.assert_close(out[:, 2], out2[:, 2])  # frame 2 only frame 1's
    plain = make_model(dyn_cfg, {"pack": 2, "prev_input": False}, time_every=0)
    torch.testing.assert_close(plain(z, tau, d, a)[:, 1], plain(z2, tau, d, a)[:, 1])
    with pytest.raises(ValueError, match="pack=3 must divide"):
        make_model(dyn_cfg, {"pack": 3})


def test_kv_cache_with_sliding_window(dyn_cfg):
    model = make_model(dyn_cfg, time_window=3)
    ctx = torch.tanh(torch.randn(1, 4, 4, 3))
    prev = torch.randint(0, 10, (1, 10))
    runs = [rollout(model, ctx, prev[:, :4], prev[:, 4:], 2, 0.1, use_cache=u, generator=torch.Generator().manual_seed(0))
            for u in (True, False)]
    torch.testing.assert_close(runs[0], runs[1], atol=1e-4, rtol=1e-4)


def test_alternating_and_single_frame_batches_reach_the_model(debug_data, monkeypatch):
    """The schedule's short, long and single-frame batches all arrive, in the stated shares."""
    from conftest import make_cfg
    from wm.config import to_dict
    from wm.stages import cache_latents, train_dynamics, train_tokenizer
    from wm.training.distributed import DistInfo

    base = debug_data["dir"]
    cfg = make_cfg(to_dict(debug_data["cfg"]), f"tokenizer.out_dir={base / 'tok_dyn'}",
                   f"latents.in_dir={debug_data['cfg'].shard.out_dir}", f"latents.out_dir={base / 'latents'}",
                   "dynamics.single_frame_frac=0.3", "dynamics.long_every=4")
    monkeypatch.chdir(base)
    train_tokenizer.run(cfg)
    cache_latents.run(cfg)
    lengths = [b["latents"].shape[1] for b, _ in zip(train_dynamics.batch_schedule(cfg, DistInfo(), 0), range(200))]
    dyn = cfg.dynamics
    assert set(lengths) == {1, dyn.short_len, dyn.long_len}
    assert lengths.count(dyn.long_len) == 50  # every 4th
    assert 0.15 < lengths.count(1) / 150 < 0.45  # ~30% of the others
    # the schedule is a function of (seed, step): a resumed schedule continues identically
    a = [b["latents"] for b, _ in zip(train_dynamics.batch_schedule(cfg, DistInfo(), 0), range(12))][7:]
    b = [b["latents"] for b, _ in zip(train_dynamics.batch_schedule(cfg, DistInfo(), 7), range(5))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    model = train_dynamics.build_dynamics(cfg, 16, 16)
    seen = []
    loss_fn = ShortcutLoss(dyn.k_max)
    for batch, _ in zip(train_dynamics.batch_schedule(cfg, DistInfo(), 0), range(8)):
        loss, logs = loss_fn(model, batch)
        seen.append(int(logs["dynamics/train/clip_len"]))
    assert set(seen) >= {dyn.long_len, dyn.short_len}


def test_rollout_psnr_pools_the_error_over_clips():
    """An exactly repeated frame must not score 100 dB into an average: two clips, one exact and
    one with squared error 0.01 everywhere, give the PSNR of their mean error (0.005: 23.0 dB)."""
    import math

    from wm.stages.train_dynamics import _psnr_by_step

    real = torch.full((2, 1, 3, 4, 4), 0.5)
    pred = real.clone()
    pred[1] += 0.1
    got = _psnr_by_step(pred, real)
    assert got.shape == (1,) and got.item() == pytest.approx(-10 * math.log10(0.005), abs=1e-4)


def test_event_frames_mark_the_frames_after_a_kill_or_a_lost_life():
    from wm.objectives.shortcut import event_frames

    rewards = torch.zeros(2, 8)
    continues = torch.ones(2, 8)
    rewards[0, 1] = 20.0   # the transition after frame 1: the kill shows in frames 2, 3, 4
    continues[1, 5] = 0.0  # a life lost into frame 6: frames 6, 7
    got = event_frames({"rewards": rewards, "continues": continues}, span=3)
    assert got[0].tolist() == [False, False, True, True, True, False, False, False]
    assert got[1].tolist() == [False] * 6 + [True, True]
