import dataclasses
import math
import warnings

import pytest
import torch

from conftest import random_block_tokenizer
from wm.metrics import avgpool2_baseline, psnr, ssim
from wm.models.tokenizer import Tokenizer
from wm.objectives.mae import RunningRMS, TokenizerLoss, sample_patch_mask
from wm.objectives import perceptual


@pytest.fixture()
def tok(debug_cfg):
    """Random blocks (``random_block_tokenizer``), as after training: an untrained identity start ignores its input."""
    torch.manual_seed(0)
    return Tokenizer(random_block_tokenizer(debug_cfg.tokenizer), 32, 32).eval()


def test_shapes_and_tanh_bottleneck(tok, debug_cfg):
    x = torch.rand(2, 3, 3, 32, 32)
    recon, z = tok(x)
    assert recon.shape == x.shape
    assert z.shape == (2, 3, debug_cfg.tokenizer.n_latents, debug_cfg.tokenizer.latent_dim)
    assert z.abs().max() < 1


def test_zero_out_init_starts_black_and_still_learns(debug_cfg):
    """tokenizer.out_init zero: the untrained tokenizer reconstructs every frame as exact black
    (the frames are ~95 % black; PyTorch's default init starts at noise far from them), and one
    optimiser step moves it off black; an unknown init is a config error."""
    from wm.errors import ConfigValueError

    cfg = dataclasses.replace(debug_cfg.tokenizer, out_init="zero")
    torch.manual_seed(0)
    model = Tokenizer(cfg, 32, 32)
    x = torch.rand(2, 2, 3, 32, 32)
    assert torch.equal(model(x)[0], torch.zeros_like(x))
    torch.manual_seed(0)
    noisy = Tokenizer(debug_cfg.tokenizer, 32, 32)(x)[0]
    assert noisy.abs().mean() > 0.1
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (model(x)[0] - x).pow(2).mean().backward()
    opt.step()
    assert model(x)[0].abs().mean() > 0
    with pytest.raises(ConfigValueError, match="out_init"):
        Tokenizer(dataclasses.replace(cfg, out_init="xavier"), 32, 32)


def test_tokenizer_is_causal_over_time(tok):
    x = torch.rand(1, 4, 3, 32, 32)
    recon, z = tok(x)
    x2 = x.clone()
    x2[:, 2:] = torch.rand_like(x2[:, 2:])
    recon2, z2 = tok(x2)
    assert torch.equal(z[:, :2], z2[:, :2]) and torch.equal(recon[:, :2], recon2[:, :2])
    assert not torch.allclose(z[:, 2], z2[:, 2])


def test_streaming_decode_with_kv_cache_matches_full(tok):
    z = torch.tanh(torch.randn(2, 5, tok.cfg.n_latents, tok.cfg.latent_dim))
    full = tok.decode(z)
    cache = tok.decoder.new_cache()
    parts = [tok.decode(z[:, t : t + 1], cache=cache) for t in range(5)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)  # float32 reorder only


def test_mask_hides_patches_and_changes_latents(tok):
    x = torch.rand(1, 2, 3, 32, 32)
    mask = torch.zeros(1, 2, tok.n_patches, dtype=torch.bool)
    mask[..., :5] = True
    assert not torch.allclose(tok.encode(x, mask), tok.encode(x))
    # masked patches' pixels do not matter at all
    x2 = x.clone()
    x2[..., :8, :8] = 0  # patch 0 of a 4x4 grid of 8x8 patches
    torch.testing.assert_close(tok.encode(x2, mask), tok.encode(x, mask))


def test_mask_ratio_is_uniform_per_frame():
    torch.manual_seed(0)
    m = sample_patch_mask(256, 4, 64, 0.9, torch.device("cpu")).float().mean(-1)
    assert 0.40 < m.mean() < 0.50  # E[U(0, 0.9)] = 0.45
    assert m.max() <= 1.0 and m.min() < 0.05 and m.max() > 0.8
    assert m.std() > 0.2  # per-frame ratios, not one global ratio


def test_running_rms_normalizes_each_term():
    rms = RunningRMS(0.5)
    rms.train()
    out = rms.normalize(torch.tensor(4.0))
    assert out.item() == pytest.approx(1.0)
    rms.normalize(torch.tensor(2.0))  # sq = 0.5*16 + 0.5*4 = 10
    assert rms.sq.item() == pytest.approx(10.0)
    rms.eval()
    assert rms.normalize(torch.tensor(10**0.5)).item() == pytest.approx(1.0)
    assert rms.sq.item() == pytest.approx(10.0)  # frozen in eval


def test_loss_with_lpips_term(tok, debug_cfg):
    net, pretrained = perceptual.load_lpips(allow_random=True)  # random backbone: only a code-path test
    cfg = dataclasses.replace(debug_cfg.tokenizer, lpips_weight=0.2, lpips_frames=3)
    loss_fn = TokenizerLoss(cfg, net)
    tok.train()
    loss, logs = loss_fn(tok, {"frames": torch.randint(0, 256, (2, 2, 3, 32, 32), dtype=torch.uint8)})
    loss.backward()
    assert "tokenizer/train/lpips" in logs and "tokenizer/train/mse" in logs
    # first step: each normalised term is exactly 1, so loss = 1 + 0.2
    assert loss.item() == pytest.approx(1.2, rel=1e-4)
    assert tok.patch_in.weight.grad is not None


def test_lpips_without_weights_warns_and_disables(monkeypatch, tmp_path):
    monkeypatch.setattr(perceptual, "_WARNED", False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.warns(UserWarning, match="pretrained AlexNet weights not found"):
        net, pretrained = perceptual.load_lpips()
    assert net is None and pretrained is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        perceptual.load_lpips()


def test_image_metrics():
    x = torch.rand(4, 3, 32, 32)
    assert ssim(x, x).mean().item() == pytest.approx(1.0, abs=1e-4)
    noisy = (x + 0.1).clamp(0, 1)
    expected = -10 * torch.log10((noisy - x).pow(2).flatten(1).mean(1))
    torch.testing.assert_close(psnr(noisy, x), expected)
    assert psnr(torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.1)).item() == pytest.approx(20.0, abs=1e-4)
    assert avgpool2_baseline(x).shape == x.shape
    smooth = torch.ones(1, 3, 8, 8) * 0.5
    assert torch.equal(avgpool2_baseline(smooth), smooth)


def test_stlpips_loads_offline_with_every_parameter_from_its_wheel(monkeypatch):
    """The default perceptual net (shift-tolerant LPIPS) needs no network: every trunk and linear
    parameter comes from the file inside the wheel, read with weights_only=True."""
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    net, pretrained = perceptual.load_perceptual("stlpips_alex")
    assert pretrained is True and net is not None and not net.training
    state = torch.load(perceptual.stlpips_weights_path("alex"), map_location="cpu", weights_only=True)
    loaded = net.state_dict()
    assert any(k.startswith("net.") for k in state)  # the trunk is in the file
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    for i in range(5):  # the linear layers, reached through both of their names
        assert torch.equal(net.lins[i].model[1].weight, state[f"lin{i}.model.1.weight"])
    # every parameter has a value from the file (none left at its random init)
    covered = set(state) | {f"lins.{i}.model.1.weight" for i in range(5)}
    assert {name for name, _ in net.named_parameters()} <= covered
    assert all(not p.requires_grad for p in net.parameters())
    torch.manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8), size=64, mode="bilinear") * 2 - 1
    assert net(x, x).abs().max().item() == 0.0
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    shifted = torch.roll(x, 1, dims=-1)
    # noise is far, a one-pixel shift is near (the point of the shift-tolerant variant)
    assert (net(x, noisy).flatten() > 5 * net(x, shifted).flatten()).all()


def test_perceptual_net_names_are_checked():
    assert perceptual.load_perceptual("none") == (None, False)
    with pytest.raises(ValueError, match="lpips_net must be one of"):
        perceptual.load_perceptual("alexnet")


def test_moving_psnr_by_hand():
    """Two moving pixels (one changes in one channel only, both count), one change below 0.1
    that does not; the model misses one moving value by 0.5: MSE 0.25 / 6 values -> 13.80 dB."""
    from wm.metrics import masked_sq_error, moving_mask, pooled_psnr

    prev = torch.zeros(1, 3, 4, 4)
    cur = prev.clone()
    cur[0, :, 0, 0] = 1.0           # a bullet appears (all channels)
    cur[0, 0, 2, 3] = 0.8           # red only
    cur[0, :, 3, 3] = 0.05          # flicker below the threshold
    mask = moving_mask(prev, cur)
    assert mask.shape == (1, 1, 4, 4) and mask.sum().item() == 2
    pred = cur.clone()
    pred[0, 1, 0, 0] = 0.5          # one value off by 0.5 inside the mask
    pred[0, 0, 1, 1] = 0.9          # a big error outside the mask does not count
    sq, n = masked_sq_error(pred, cur, mask)
    assert n == 6 and sq == pytest.approx(0.25)
    assert pooled_psnr(sq, n) == pytest.approx(10 * math.log10(24), abs=1e-4)
    assert pooled_psnr(0.0, 0) is None


def test_moving_weight_counts_changing_pixels_more(debug_cfg):
    """With moving_weight w, an error on a pixel that changed from the previous frame costs
    (1 + w) times the same error on a still pixel (before the running-RMS normalisation)."""
    x = torch.zeros(1, 2, 3, 8, 8)
    x[0, 1, :, 2, 2] = 1.0  # appears in frame 2: a moving pixel

    class Fixed(torch.nn.Module):
        def __init__(self, recon):
            super().__init__()
            self.recon = recon

        def forward(self, frames, mask):
            return self.recon, None

    def loss(at, w):
        recon = x.clone()
        recon[0, 1, 0, at[0], at[1]] += 0.5
        cfg = dataclasses.replace(debug_cfg.tokenizer, moving_weight=w, lpips_weight=0.0, patch=4)
        fn = TokenizerLoss(cfg, None).eval()  # eval: the running RMS stays at its zero init (divides by 1e-8)
        return fn(Fixed(recon), {"frames": x})[0].item()

    assert loss((2, 2), 0.0) == pytest.approx(loss((5, 5), 0.0))
    assert loss((2, 2), 7.0) == pytest.approx(8 * loss((5, 5), 7.0))


def test_hard_pixels_count_more_by_hand():
    """hard_frac / hard_weight: in each frame the given share of pixels with the largest error
    (summed over channels) count (1 + weight) times, the weights normalised to a weighted mean.
    One 4x4 frame, 2 of 16 pixels hard (hard_frac 1/8): errors 0.5 (one channel) and 0.3 (three
    channels) are the two largest; a smaller error elsewhere stays at weight 1."""
    from wm.objectives.mae import reconstruction_error

    x = torch.zeros(1, 1, 3, 4, 4)
    recon = x.clone()
    recon[0, 0, 0, 0, 0] = 0.5        # pixel error 0.25
    recon[0, 0, :, 1, 1] = 0.3        # pixel error 3 * 0.09 = 0.27
    recon[0, 0, 2, 3, 3] = 0.2        # pixel error 0.04: not among the top 2
    total = 0.25 + 0.27 + 0.04
    term, mse = reconstruction_error(recon, x, 0.0)
    assert term.item() == pytest.approx(total / 48) and mse.item() == pytest.approx(total / 48)
    term, mse = reconstruction_error(recon, x, 0.0, hard_frac=2 / 16, hard_weight=3.0)
    # weights: 4 on the two hard pixels (all three channels), 1 elsewhere; mean weight (2 * 4 + 14) / 16
    expect = ((0.25 + 0.27) * 4 + 0.04) / 48 / ((2 * 4 + 14) / 16)
    assert term.item() == pytest.approx(expect) and mse.item() == pytest.approx(total / 48)
    assert reconstruction_error(recon, x, 0.0, hard_frac=2 / 16, hard_weight=0.0)[0].item() == pytest.approx(total / 48)


def test_grad_balance_script_reports_each_terms_pull(debug_data, debug_raw, tmp_path):
    """scripts/tokenizer_grad_balance.py on a debug tokenizer: per batch, the two terms' gradient
    norms, their ratio and cosine, consistent with each other; finite figures."""
    import math

    from conftest import load_script, make_cfg, save_init_model
    from wm import config as config_mod
    from wm.models.tokenizer import Tokenizer

    mod = load_script("tokenizer_grad_balance")
    cfg = make_cfg(debug_raw)
    torch.manual_seed(0)
    save_init_model(tmp_path / "tok", Tokenizer(cfg.tokenizer, cfg.env.height, cfg.env.width), cfg)
    config_mod.write_params(debug_raw, tmp_path / "params.yaml")
    out = mod.grad_balance(str(tmp_path / "tok"), debug_data["cfg"].shard.out_dir, str(tmp_path / "params.yaml"),
                           batches=2)
    assert out["batches"] == 2 and len(out["rows"]) == 2
    for row in out["rows"]:
        assert all(math.isfinite(v) for v in row.values())
        assert row["grad_mse"] > 0 and row["grad_lpips"] > 0 and -1 <= row["cos"] <= 1
        assert row["ratio"] == pytest.approx(row["grad_lpips"] / row["grad_mse"], rel=1e-5)
    assert out["ratio_min"] <= out["ratio_mean"] <= out["ratio_max"]


def test_seed_spread_script_aggregates_runs(debug_data, debug_raw, tmp_path):
    """scripts/tokenizer_seeds.py over two run folders (a debug tokenizer each, trained on the
    debug shards, with the stage's metrics file): per-seed figures as written, constant channels
    and the three worst patch positions from the weights, and mean / sd computed as by hand."""
    import json

    from conftest import load_script, make_cfg, save_init_model
    from wm.models.tokenizer import Tokenizer

    mod = load_script("tokenizer_seeds")  # it imports its neighbour tokenizer_error_map
    runs, psnrs = [], (30.0, 31.0)
    for seed, p in enumerate(psnrs):
        run = tmp_path / f"s{seed}"
        cfg = make_cfg(debug_raw, f"shard.out_dir={debug_data['cfg'].shard.out_dir}", f"tokenizer.train.seed={seed}")
        torch.manual_seed(seed)
        save_init_model(run / "ckpt", Tokenizer(cfg.tokenizer, cfg.env.height, cfg.env.width), cfg)
        (run / "data" / "metrics").mkdir(parents=True)
        (run / "data" / "metrics" / "tokenizer.json").write_text(
            json.dumps({"val/psnr": p, "val/psnr_moving": p - 10, "train_steps_per_s": 2.0}))
        runs.append(run)
    out = mod.seed_spread(runs)
    assert set(out["seeds"]) == {"0", "1"}
    assert out["seeds"]["1"]["val/psnr"] == 31.0 and out["seeds"]["0"]["val/psnr_moving"] == 20.0
    assert out["val/psnr_mean"] == pytest.approx(30.5) and out["val/psnr_sd"] == pytest.approx(0.5 ** 0.5)
    assert "val/lpips_mean" not in out  # no run reported it
    for s in out["seeds"].values():
        assert isinstance(s["constant_latent_channels"], int)
        worst = [w["rmse_x1000"] for w in s["worst_patches"]]
        assert len(worst) == 3 and worst == sorted(worst, reverse=True) and worst[0] > 0


def test_rescore_script_scores_every_val_clip_the_same_for_every_run(debug_data, debug_raw, tmp_path):
    """scripts/tokenizer_rescore.py: two checkpoints of different train batch sizes are scored on
    every whole clip of the val split (the manifest's count), each figure equal to the stage's
    evaluate_tokenizer on those clips, and a checkpoint scores the same whichever run comes first."""
    from conftest import load_script, make_cfg, save_init_model
    from wm.data.shards import count_clips, make_clip_loader
    from wm.stages.train_tokenizer import evaluate_tokenizer

    mod = load_script("tokenizer_rescore")
    shards = debug_data["cfg"].shard.out_dir
    runs, models = {}, {}
    for seed, batch in ((0, 2), (1, 3)):
        cfg = make_cfg(debug_raw, f"shard.out_dir={shards}", f"tokenizer.train.seed={seed}",
                       f"tokenizer.train.batch_size={batch}")
        torch.manual_seed(seed)
        models[f"s{seed}"] = Tokenizer(cfg.tokenizer, cfg.env.height, cfg.env.width).eval()
        save_init_model(tmp_path / f"s{seed}", models[f"s{seed}"], cfg)
        runs[f"s{seed}"] = str(tmp_path / f"s{seed}")
    out = mod.rescore(runs, clip_len=2)
    assert out["clips"] == count_clips(shards, "val", 2) > 0
    batches = list(make_clip_loader(shards, "val", 2, 8, shuffle=False, infinite=False))
    for name, model in models.items():
        want = evaluate_tokenizer(model, batches)
        assert out[name]["val/psnr"] == pytest.approx(want["val/psnr"], rel=1e-5)
        assert out[name]["val/psnr_moving"] == pytest.approx(want["val/psnr_moving"], rel=1e-5)
    swapped = mod.rescore({"s1": runs["s1"], "s0": runs["s0"]}, clip_len=2)
    assert swapped["s0"]["val/psnr"] == pytest.approx(out["s0"]["val/psnr"], rel=1e-6)


def test_grad_balanced_lpips_term_pulls_at_its_weight(debug_cfg):
    """lpips_balance=grad: at the reconstruction, the perceptual term's gradient is scaled to
    lpips_weight x the MSE term's norm, whatever the two terms' own scales."""
    frames = torch.rand(2, 3, 3, 16, 16)

    class Recon(torch.nn.Module):  # the reconstruction is a free parameter
        def __init__(self):
            super().__init__()
            self.out = torch.nn.Parameter(torch.rand(2, 3, 3, 16, 16))

        def forward(self, x, mask):
            return self.out * 1.0, None

    def far(a, b):  # a stand-in perceptual distance 1000x as steep as the MSE
        return 1000 * (a - b).abs().mean(dim=(1, 2, 3))

    for balance, weight in (("grad", 0.1), ("grad", 0.5)):
        cfg = dataclasses.replace(debug_cfg.tokenizer, lpips_weight=weight, lpips_frames=6, lpips_balance=balance,
                                  moving_weight=0.0, mask_prob=0.0)
        model = Recon()
        loss, logs = TokenizerLoss(cfg, far)(model, {"frames": frames})
        loss.backward()
        total = model.out.grad.clone()
        model.out.grad = None
        TokenizerLoss(dataclasses.replace(cfg, lpips_weight=0.0), None)(model, {"frames": frames})[0].backward()
        g_mse = model.out.grad
        assert (total - g_mse).norm().item() == pytest.approx(weight * g_mse.norm().item(), rel=1e-4)
        assert logs["tokenizer/train/lpips_scale"] > 0
    with pytest.raises(Exception, match="lpips_balance"):
        TokenizerLoss(dataclasses.replace(debug_cfg.tokenizer, lpips_balance="both"), None)


def test_held_out_set_is_the_whole_val_split_whatever_the_batch_size(debug_data, debug_raw):
    """train_tokenizer scores every whole val clip in batches of 8, the same clips at any training
    batch size or seed; a limit picks that many of those batches, first to last, spread evenly."""
    from conftest import make_cfg
    from wm.data.shards import count_clips
    from wm.data.held_out import held_out_batches
    from wm.stages.train_tokenizer import EVAL_BATCH, val_batches

    shards = debug_data["cfg"].shard.out_dir
    sets = [val_batches(make_cfg(debug_raw, f"shard.out_dir={shards}", "tokenizer.eval_batches=0",
                                 f"tokenizer.train.batch_size={b}", f"tokenizer.train.seed={s}"))
            for b, s in ((2, 0), (3, 1))]
    clip_len = make_cfg(debug_raw).tokenizer.train.clip_len
    total = count_clips(shards, "val", clip_len)
    for batches in sets:
        assert sum(len(b["frames"]) for b in batches) == total // EVAL_BATCH * EVAL_BATCH > 0
        assert all(b["frames"].shape[:2] == (EVAL_BATCH, clip_len) for b in batches)
    assert all(torch.equal(a["frames"], b["frames"]) for a, b in zip(*sets))
    full = sets[0]
    assert len(full) >= 3  # the debug split holds enough clips to test the spread
    picked = held_out_batches(shards, clip_len, EVAL_BATCH, limit=3)
    assert [next(i for i, b in enumerate(full) if torch.equal(b["frames"], p["frames"])) for p in picked] == \
        [0, round((len(full) - 1) / 2), len(full) - 1]


def test_seed_split_script_takes_the_named_parameters_from_the_other_seed(debug_cfg, monkeypatch):
    """scripts/tokenizer_seed_split.py: with SWAP_PREFIXES the encoder side's init comes from
    SWAP_SEED and the rest from the run's own seed."""
    import wm.stages.train_tokenizer as stage
    from conftest import load_script

    split = load_script("tokenizer_seed_split")
    build = stage.build_tokenizer
    monkeypatch.setattr(stage, "build_tokenizer", build)  # restored after the test
    split._override_init(0, ("patch_in", "encoder."))
    torch.manual_seed(1)
    mixed = stage.build_tokenizer(debug_cfg).state_dict()
    own = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        own[seed] = build(debug_cfg).state_dict()
    for k, v in mixed.items():
        donor = 0 if k.startswith(("patch_in", "encoder.")) else 1
        assert torch.equal(v, own[donor][k]), k
    assert not torch.equal(own[0]["patch_in.weight"], own[1]["patch_in.weight"])
