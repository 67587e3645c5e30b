import pytest
import torch

from wm.objectives.pmpo import pmpo_loss, reverse_kl
from wm.objectives.returns import lambda_returns
from wm.objectives.twohot import make_bins, symexp, symlog, twohot_decode, twohot_encode, twohot_loss


def test_symlog_symexp_inverse():
    x = torch.tensor([-1e4, -3.0, -0.5, 0.0, 0.2, 7.0, 1e5])
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-5, atol=1e-5)
    assert symlog(torch.tensor(0.0)) == 0 and symlog(torch.tensor(-1.0)) == -torch.log(torch.tensor(2.0))


def test_twohot_round_trip():
    bins = make_bins(255)
    y = torch.tensor([-250.0, -3.3, 0.0, 0.1, 20.0, 200.0, 1234.5])
    enc = twohot_encode(y, bins)
    assert torch.allclose(enc.sum(-1), torch.ones(len(y)))
    assert ((enc > 0).sum(-1) <= 2).all()  # at most two neighbouring bins
    decoded = (enc * bins).sum(-1)  # real-space bins: the two-hot expectation is the target itself
    torch.testing.assert_close(decoded, y.clamp(bins[0], bins[-1]), rtol=1e-4, atol=1e-4)
    assert bins[len(bins) // 2] == 0 and torch.all(bins[1:] > bins[:-1])
    torch.testing.assert_close(bins[-1], symexp(torch.tensor(6.0)))
    # logits equal to log two-hot weights decode back too (the head's optimum)
    logits = torch.log(enc.clamp_min(1e-12))
    torch.testing.assert_close(twohot_decode(logits, bins), y.clamp(bins[0], bins[-1]), rtol=1e-3, atol=1e-3)
    # the loss is minimised by the matching distribution
    assert (twohot_loss(logits, y, bins) < twohot_loss(torch.zeros_like(logits), y, bins)).all()


def test_twohot_calibrated_for_a_sparse_reward():
    """A head trained on a 0/20 reward with p = 0.02 decodes to 20 p = 0.4 (the symlog-space decode
    of earlier versions gave 21^p - 1 = 0.063)."""
    bins = make_bins(255)
    gen = torch.Generator().manual_seed(0)
    logits = torch.zeros(255, requires_grad=True)  # one state, a zero-initialised output layer
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(1500):
        y = 20.0 * (torch.rand(512, generator=gen) < 0.02).float()
        loss = twohot_loss(logits.expand(512, -1), y, bins).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert twohot_decode(logits.detach(), bins).item() == pytest.approx(0.4, abs=0.02)
    assert twohot_decode(torch.zeros(255), bins).item() == pytest.approx(0.0, abs=1e-4)  # symmetric at init


def test_lambda_returns_hand_computed():
    r = torch.tensor([[1.0, 2.0]])
    v = torch.tensor([[0.5, 1.0, 4.0]])
    c = torch.tensor([[1.0, 1.0]])
    g, lam = 0.9, 0.5
    r1 = 2.0 + g * (1 - lam) * 4.0 + g * lam * 4.0  # R_1 = r_1 + g((1-l)V_2 + l R_2), R_2 = V_2
    r0 = 1.0 + g * ((1 - lam) * 1.0 + lam * r1)
    out = lambda_returns(r, v, c, g, lam)
    torch.testing.assert_close(out, torch.tensor([[r0, r1]]))
    # a terminal cuts the bootstrap
    out = lambda_returns(r, v, torch.tensor([[1.0, 0.0]]), g, lam)
    assert out[0, 1].item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        lambda_returns(r, v[:, :2], c)


def test_pmpo_signs_and_kl_direction():
    prior = torch.zeros(4, 3)
    logits = torch.zeros(4, 3, requires_grad=True)
    actions = torch.tensor([0, 0, 1, 2])
    adv = torch.tensor([2.0, 0.5, -1.0, -3.0])
    loss, logs = pmpo_loss(logits, actions, adv, prior, alpha=0.5, beta=0.0)
    loss.backward()
    g = logits.grad
    # gradient descent raises the logit of positive-advantage actions, lowers negative ones
    assert g[0, 0] < 0 and g[1, 0] < 0 and g[2, 1] > 0 and g[3, 2] > 0
    assert logs["pmpo/pos_frac"] == 0.5
    # only the sign matters: scaling advantages changes nothing
    l2, _ = pmpo_loss(logits, actions, adv * 100, prior, beta=0.0)
    assert l2.item() == pytest.approx(loss.item())
    # reverse KL: KL[pi || prior] = sum pi (log pi - log prior)
    p = torch.tensor([[2.0, 0.0, -1.0]])
    q = torch.tensor([[0.0, 1.0, 0.0]])
    lp, lq = p.log_softmax(-1), q.log_softmax(-1)
    assert reverse_kl(p, q).item() == pytest.approx((lp.exp() * (lp - lq)).sum().item(), rel=1e-5)
    assert reverse_kl(p, q).item() != pytest.approx((lq.exp() * (lq - lp)).sum().item(), rel=1e-3)
    # beta pulls the policy towards the prior
    far = torch.tensor([[5.0, -5.0, 0.0]], requires_grad=True)
    loss, _ = pmpo_loss(far, torch.tensor([0]), torch.tensor([0.0]), torch.zeros(1, 3), alpha=0.5, beta=1.0)
    loss.backward()
    assert far.grad[0, 0] > 0  # descent lowers the dominant logit, towards the uniform prior
