import dataclasses

import pytest
import torch

from wm.config import TransformerConfig
from wm.models.transformer import Attention, Transformer, softcap_logits

BASE = TransformerConfig(dim=32, depth=4, heads=4, kv_heads=2, mlp_ratio=2.0, time_every=2, time_window=0,
                         qk_norm=True, softcap=0.0, rope_base=10000.0, registers=2)


def model(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(dataclasses.replace(BASE, **kw)).eval()


@pytest.mark.parametrize("softcap", [0.0, 5.0])
def test_block_causal_future_does_not_leak(softcap):
    net = model(softcap=softcap)
    x = torch.randn(2, 5, 6, 32)
    y = net(x)
    x2 = x.clone()
    x2[:, 3:] += torch.randn_like(x2[:, 3:])  # change frames 3 and 4
    y2 = net(x2)
    assert torch.equal(y[:, :3], y2[:, :3])  # frames <= 2 untouched, exactly
    assert not torch.allclose(y[:, 3], y2[:, 3])
    # within a frame attention is full: changing one token changes the others of that frame
    x3 = x.clone()
    x3[:, 0, 0] += 1.0
    assert not torch.allclose(net(x3)[:, 0, 1:], y[:, 0, 1:])


@pytest.mark.parametrize("window", [0, 3, 4, 6])
def test_kv_cache_matches_full_recompute(window):
    net = model(time_window=window)
    x = torch.randn(2, 7, 5, 32)
    full = net(x)
    cache = net.new_cache()
    steps = [net(x[:, t : t + 1], cache=cache) for t in range(7)]
    # tolerance: float32 accumulation order differs between the two paths
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    # a chunk of several frames at once after a cached prefix also agrees
    cache = net.new_cache()
    first = net(x[:, :4], cache=cache)
    rest = net(x[:, 4:], cache=cache)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_without_update_does_not_advance():
    net = model()
    x = torch.randn(1, 3, 4, 32)
    cache = net.new_cache()
    net(x[:, :2], cache=cache)
    a = net(x[:, 2:], cache=cache, update_cache=False)
    assert cache.pos == 2 and cache.length == 2
    b = net(x[:, 2:], cache=cache)
    torch.testing.assert_close(a, b)
    assert cache.pos == 3


def test_gqa_with_all_kv_heads_equals_plain_mha():
    """kv_heads == heads: our attention equals textbook multi-head softmax attention."""
    torch.manual_seed(0)
    attn = Attention(dataclasses.replace(BASE, kv_heads=4))
    x = torch.randn(3, 10, 32)
    q, k, v = attn.project(x, torch.arange(10))
    ours = attn.attend(q, k, v, None, causal=True)
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    scores = scores.masked_fill(~torch.ones(10, 10, dtype=torch.bool).tril(), float("-inf"))
    ref = attn.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(3, 10, 32))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # the soft-cap path with a cap far above the logits agrees with the SDPA path
    attn.softcap = 1e6
    torch.testing.assert_close(attn.attend(q, k, v, None, causal=True), ours, atol=1e-5, rtol=1e-5)


def test_gqa_shares_kv_heads():
    """kv_heads=2 equals MHA whose 4 heads use duplicated key/value projections."""
    torch.manual_seed(0)
    gqa = Attention(dataclasses.replace(BASE, kv_heads=2))
    mha = Attention(dataclasses.replace(BASE, kv_heads=4))
    with torch.no_grad():
        for name in ("q", "out"):
            getattr(mha, name).weight.copy_(getattr(gqa, name).weight)
        mha.q_norm.weight.copy_(gqa.q_norm.weight)
        mha.k_norm.weight.copy_(gqa.k_norm.weight)
        k, v = gqa.kv.weight.view(2, 2, 8, 32).unbind(0)
        mha.kv.weight.copy_(torch.cat([k.repeat_interleave(2, 0), v.repeat_interleave(2, 0)]).reshape(64, 32))
    x = torch.randn(2, 6, 32)
    pos = torch.arange(6)
    out_g = gqa.attend(*gqa.project(x, pos), None)
    out_m = mha.attend(*mha.project(x, pos), None)
    torch.testing.assert_close(out_g, out_m, atol=1e-5, rtol=1e-5)


def test_softcap_bounds_logits():
    logits = torch.tensor([-1e4, -30.0, 0.0, 3.0, 1e4])
    capped = softcap_logits(logits, 10.0)
    assert capped.abs().max() <= 10.0
    assert torch.allclose(capped[2:4], torch.tensor([0.0, 10 * torch.tanh(torch.tensor(0.3))]))
    assert torch.equal(softcap_logits(logits, 0.0), logits)
    # in the layer: huge queries/keys still give a softmax that is not one-hot
    attn = Attention(dataclasses.replace(BASE, softcap=2.0, qk_norm=False))
    q = torch.randn(1, 4, 5, 8) * 100
    k = torch.randn(1, 2, 5, 8) * 100
    v = torch.eye(5, 8).expand(1, 2, 5, 8)
    with torch.no_grad():
        attn.out.weight.copy_(torch.eye(32))
    out = attn.attend(q, k, v, None).view(1, 5, 4, 8)
    assert out.max() < 0.99  # weights bounded by softmax over logits in (-2, 2)


def test_hidden_tokens_are_not_read_by_others():
    net = model()
    x = torch.randn(1, 3, 6, 32)
    hidden = torch.tensor([False, False, False, False, True, True])
    y = net(x, hidden=hidden)
    x2 = x.clone()
    x2[:, :, 4:] = torch.randn(1, 3, 2, 32)
    y2 = net(x2, hidden=hidden)
    torch.testing.assert_close(y[:, :, :4], y2[:, :, :4])  # visible tokens unaffected
    x3 = x.clone()
    x3[:, :, 0] += 1
    assert not torch.allclose(net(x3, hidden=hidden)[:, :, 4:], y[:, :, 4:])  # hidden tokens read all


def test_registers_change_outputs_and_are_dropped():
    net = model(registers=3)
    y = net(torch.randn(2, 2, 5, 32))
    assert y.shape == (2, 2, 5, 32)


def test_zero_residual_starts_as_the_identity_and_then_trains_every_weight():
    net = model(zero_residual=True, registers=0).train()
    x, target = torch.randn(2, 3, 5, 32), torch.randn(2, 3, 5, 32)
    assert torch.allclose(net(x), net.norm(x))  # every block adds nothing at first
    assert not torch.allclose(model(registers=0)(x), net.norm(x))  # the default init is untouched
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for _ in range(2):  # step 1 moves the output projections; step 2 reaches q, k, v and the MLP's input side
        opt.zero_grad()
        (net(x) - target).pow(2).mean().backward()
        opt.step()
    frozen = [n for n, p in net.named_parameters() if torch.equal(p.detach(), before[n])]
    assert frozen == []
    assert not torch.allclose(net(x), net.norm(x))
