import dataclasses
import warnings

import pytest
import torch

from wm.metrics import avgpool2_baseline, psnr, ssim
from wm.models.tokenizer import Tokenizer
from wm.objectives.mae import RunningRMS, TokenizerLoss, sample_patch_mask
from wm.objectives import perceptual


@pytest.fixture()
def tok(debug_cfg):
    torch.manual_seed(0)
    return Tokenizer(debug_cfg.tokenizer, 32, 32).eval()


def test_shapes_and_tanh_bottleneck(tok, debug_cfg):
    x = torch.rand(2, 3, 3, 32, 32)
    recon, z = tok(x)
    assert recon.shape == x.shape
    assert z.shape == (2, 3, debug_cfg.tokenizer.n_latents, debug_cfg.tokenizer.latent_dim)
    assert z.abs().max() < 1


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
